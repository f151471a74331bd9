"""gradio widgets of the table's controls (core/controls.py), shared by the gradio app and the A1111 Extras tab.

``gr`` is the caller's gradio (the app's, or the webui's own 3.41 / 4+): only arguments every version knows.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..core import controls


def control_widget(gr, name: str, elem_id: str, override: Optional[dict] = None):
    """The widget of one control with the row's label, default, range or choices and help: a slider (numbers),
    a dropdown (choices), a checkbox, an image or a text box. ``override``: choices only known at run time
    (files on disk), another default, or other widget arguments."""
    c = controls.BY_NAME[name]
    kw = {**controls.gradio_kwargs(name), "elem_id": elem_id, **(override or {})}
    if c.kind in ("float", "int"):
        return gr.Slider(kw.pop("minimum"), kw.pop("maximum"), **kw)
    if c.kind == "bool":
        return gr.Checkbox(**kw)
    if c.kind == "image":  # no info line under an image: the help goes into the label
        kw.pop("value", None)
        kw.pop("info", None)
        return gr.Image(**{**kw, "label": f"{c.title} (optional): {c.help}"})
    if "choices" in kw:
        return gr.Dropdown(kw.pop("choices"), **kw)
    return gr.Textbox(**kw)


def _layout_order(names: list[str], overrides: dict, sliders_per_row: int) -> list[list[str]]:
    """Rows: the dropdowns side by side, the sliders ``sliders_per_row`` to a row, then one row per other
    widget."""
    def kind(name):
        c = controls.BY_NAME[name]
        return "slider" if c.kind in ("float", "int") else "dropdown" if (
            c.choices or "choices" in overrides.get(name, {})) and c.kind != "image" else "other"
    dropdowns = [n for n in names if kind(n) == "dropdown"]
    sliders = [n for n in names if kind(n) == "slider"]
    rows = [dropdowns] if dropdowns else []
    rows += [sliders[i:i + sliders_per_row] for i in range(0, len(sliders), sliders_per_row)]
    return rows + [[n] for n in names if kind(n) == "other"]


def control_panel(gr, names: list[str], elem_id: Callable[[str], str], overrides: Optional[dict[str, dict]] = None,
                  sliders_per_row: int = 1) -> dict[str, Any]:
    """The widgets of ``names`` (control names) laid out in rows inside the current gradio block:
    {name: widget} in the order of ``names``. ``overrides``: {name: widget arguments} (see ``control_widget``)."""
    overrides = overrides or {}
    widgets = {}
    for row in _layout_order(list(names), overrides, sliders_per_row):
        if len(row) == 1:
            widgets[row[0]] = control_widget(gr, row[0], elem_id(row[0]), overrides.get(row[0]))
            continue
        with gr.Row():
            for name in row:
                widgets[name] = control_widget(gr, name, elem_id(name), overrides.get(name))
    return {name: widgets[name] for name in names}
