"""models list | download NAME | verify [NAME]"""
from __future__ import annotations


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
            print("\nFolders searched, in order: explicit path, ComfyUI folder_paths, A1111 models dir, "
                  "$FACEREFINE_HOME, the package's weights/. Get a file with `models download NAME`.")
        return {"ok": True, "models": rows}

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
            results.append({"name": name, "path": str(path), "status": "present"})
        else:
            results.append(_verify(spec))
        if not args.json:
            r = results[-1]
            print(f"{r['name']:<24}{r['status']:<12}{r.get('path') or ''}")
    ok = all(r["status"] in ("ok", "present", "unverified", "missing") for r in results)
    return {"ok": ok, "results": results, "exit_code": 0 if ok else 1}


def _verify(spec) -> dict:
    from ..models.download import sha256_of
    from ..models.locate import find_existing
    path = find_existing(spec.file, spec.folder)
    if path is None:
        return {"name": spec.name, "status": "missing", "path": None}
    if spec.size is not None and path.stat().st_size != spec.size:
        return {"name": spec.name, "status": "bad-size", "path": str(path)}
    if not spec.sha256:
        return {"name": spec.name, "status": "unverified", "path": str(path)}
    digest = sha256_of(path)
    return {"name": spec.name, "status": "ok" if digest == spec.sha256 else "bad-hash", "path": str(path),
            "sha256": digest}
