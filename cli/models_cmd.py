"""models list | download NAME | verify [NAME]"""
from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("action", choices=["list", "download", "verify"])
    p.add_argument("name", nargs="?", help="registry name (see `models list`)")


def run(args) -> dict:
    from ..errors import FaceRefineError
    from ..models.locate import find_existing, search_folders
    from ..models.registry import REGISTRY

    if args.action == "list":
        rows = []
        for spec in REGISTRY.values():
            path = find_existing(spec.file, spec.folder)
            rows.append({**spec.to_json(), "present": path is not None, "path": str(path) if path else None,
                         "searched": [str(p) for p in search_folders(spec.folder)]})
        if not args.json:
            wn = max(len(r["name"]) for r in rows) + 2
            wf = max(len(r["file"]) for r in rows) + 2
            print(f"{'name':<{wn}}{'present':<9}{'folder':<20}{'file':<{wf}}needed by")
            for r in rows:
                print(f"{r['name']:<{wn}}{'yes' if r['present'] else 'no':<9}{r['folder']:<20}{r['file']:<{wf}}"
                      f"{r['needed_by']}")
            print("\nFolders searched, in this order (after an explicit path; ComfyUI's and A1111's model folders "
                  "come first when running inside them):")
            for kind, folders in _searched_by_kind(rows).items():
                print(f"  {kind}:")
                for folder in folders:
                    print(f"    {folder}{'' if Path(folder).is_dir() else '  (does not exist yet)'}")
            print("Get a file with `models download NAME`.")
        return {"ok": True, "models": rows,
                "searched": {kind: folders for kind, folders in _searched_by_kind(rows).items()}}

    names = [args.name] if args.name else ([] if args.action == "download" else list(REGISTRY))
    if not names:
        raise FaceRefineError("models download needs a NAME; see `models list`")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise FaceRefineError(f"unknown model(s) {unknown}; known: {sorted(REGISTRY)}")
    results = []
    for name in names:
        spec = REGISTRY[name]
        if args.action == "download":
            from ..models.download import download_spec
            path = find_existing(spec.file, spec.folder) or download_spec(spec)
            results.append({"name": name, "path": str(path), "status": "present", "source": _source(spec, path)})
        else:
            results.append(_verify(spec))
    if not args.json:
        _print_table(["name", "status", "source", "path"],
                     [[r["name"], r["status"], r.get("source", ""), r.get("path") or ""] for r in results])
    ok = all(r["status"] in ("ok", "present", "unverified", "missing", "shipped") for r in results)
    return {"ok": ok, "results": results, "exit_code": 0 if ok else 1}


def _searched_by_kind(rows) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["folder"], r["searched"])
    return out


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns at least two spaces apart, however long a name is."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(f"{str(x):<{w}}" for x, w in zip(row, widths)).rstrip())


def _source(spec, path) -> str:
    from ..models.locate import PACKAGE_WEIGHTS
    if path is None:
        return ""
    try:
        shipped = Path(path).resolve().parent == PACKAGE_WEIGHTS.resolve()
    except OSError:
        shipped = False
    return "shipped" if shipped and spec.embedded else "user"


def _verify(spec) -> dict:
    """ok / bad-size / bad-hash against the registry; a shipped file without a registry hash is hashed
    and reported as "shipped" with its digest (it came with the package; nothing to compare it to)."""
    from ..models.download import sha256_of
    from ..models.locate import find_existing
    path = find_existing(spec.file, spec.folder)
    if path is None:
        return {"name": spec.name, "status": "missing", "path": None, "source": ""}
    source = _source(spec, path)
    base = {"name": spec.name, "path": str(path), "source": source}
    if spec.size is not None and path.stat().st_size != spec.size:
        return {**base, "status": "bad-size"}
    if not spec.sha256 and source != "shipped":
        return {**base, "status": "unverified"}
    digest = sha256_of(path)
    if not spec.sha256:
        return {**base, "status": "shipped", "sha256": digest}
    return {**base, "status": "ok" if digest == spec.sha256 else "bad-hash", "sha256": digest}
