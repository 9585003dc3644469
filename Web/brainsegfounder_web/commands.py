"""``brainsegfounder web``: registered through the ``brainsegfounder.commands`` entry point, so the
engine's CLI offers it without importing trame (imported only when the command runs)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import List

from brainsegfounder.errors import UserError

from .case_files import DEFAULT_MAX_UPLOAD_MB

# Offscreen rendering without a display: VTK's wheel picks EGL (a GPU's driver, or Mesa on a CPU
# server); OSMesa is the fallback where no EGL library exists (see the README).
OFFSCREEN_WINDOW = "vtkEGLRenderWindow"


def register(subparsers, add_common) -> dict:
    web = subparsers.add_parser(
        "web",
        help="serve the segmentation workflow in a browser (trame-slicer; pip install .[web])",
        description="Upload or pick a case, segment it, correct it and save it as a training case, in a browser. "
        "Binds to 127.0.0.1 unless --host says otherwise; put a reverse proxy with TLS and log-in in front of it.",
    )
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument("--cases", help="folder of cases (one sub-folder of NIfTI/NRRD images each) users may pick")
    web.add_argument(
        "--models",
        help="the BrainSegFounder folder: its models/, downloads/ and (without --save-to) cases/ "
        "(default ~/.brainsegfounder, or $BRAINSEGFOUNDER_HOME)",
    )
    web.add_argument("--save-to", help="where Save as training case writes (default ~/.brainsegfounder/cases)")
    web.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload accepted")
    web.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N for segmentation and fine-tuning")
    web.add_argument(
        "--registry",
        help="the list of models to offer (a JSON like the shipped models.json, e.g. pointing at a hospital "
        "mirror); its bundled files are looked for beside the shipped list",
    )
    web.add_argument(
        "--finetune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe setting for fine-tuning runs started from the page (e.g. train.steps_per_epoch=50); repeatable",
    )
    web.add_argument(
        "--sessions",
        type=int,
        default=4,
        help="each browser session gets its own app process and scene, at most this many at once (default 4); "
        "0: one scene in this process, shared by every tab",
    )
    web.add_argument(
        "--session-idle",
        type=int,
        default=900,
        metavar="SECONDS",
        help="a session whose page has been closed this long ends, unsaved corrections with it (default 900)",
    )
    web.add_argument("--idle-exit", type=int, default=0, help=argparse.SUPPRESS)  # a session's app, from the front
    add_common(web)
    return {"web": cmd_web}


def _app_args(args) -> List[str]:
    """The options every session's app process gets from the front's command line."""
    out = []
    for flag, value in (("--cases", args.cases), ("--models", args.models), ("--save-to", args.save_to)):
        if value:
            out += [flag, str(Path(value).resolve())]
    if args.registry:
        out += ["--registry", str(Path(args.registry).resolve())]
    out += ["--max-upload-mb", str(args.max_upload_mb), "--device", args.device, "--sessions", "0"]
    for item in args.finetune_set:
        out += ["--finetune-set", item]
    return out


def cmd_web(args, report, cancel) -> dict:
    if args.cases and not Path(args.cases).is_dir():
        raise UserError(f"--cases {args.cases} is not a folder; give the folder holding one sub-folder per case")
    if args.models:
        os.environ["BRAINSEGFOUNDER_HOME"] = str(Path(args.models).resolve())
    overrides = {}
    for item in args.finetune_set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--finetune-set {item}: give KEY=VALUE, e.g. train.steps_per_epoch=50")
        overrides[key.strip()] = value.strip()
    if args.registry and not Path(args.registry).is_file():
        raise UserError(f"--registry {args.registry} is not a file; give a model list like the shipped models.json")
    if args.sessions < 0 or args.session_idle < 1:
        raise UserError("--sessions must be 0 or more and --session-idle 1 or more (seconds)")
    if args.sessions:
        return _serve_sessions(args)
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", OFFSCREEN_WINDOW)
    try:
        from .app import BrainSegFounderWebApp
    except ImportError as error:
        raise UserError(
            f"the web app needs the web extra ({error.name} is missing); install it with: pip install '.[web]'"
        ) from None
    app = BrainSegFounderWebApp(
        cases_root=Path(args.cases) if args.cases else None,
        save_root=Path(args.save_to) if args.save_to else None,
        max_upload_mb=args.max_upload_mb,
        device=args.device,
        finetune_overrides=overrides,
        models=_model_manager(args.registry),
    )
    # The CLI's handlers turn SIGTERM into a cancel flag for batch work; a server just stops.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = sys.argv[:1]  # trame reads the command line too; ours is parsed already
    print(f"BrainSegFounder web app on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    # timeout: trame's default (300 s) would stop a shared server five minutes after its last tab closed;
    # a session's app stops after the front's --session-idle
    app.server.start(
        host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=args.idle_exit
    )
    return {"message": "web app stopped"}


def _serve_sessions(args) -> dict:
    from .session_front import serve  # aiohttp's run_app turns SIGTERM and SIGINT into a clean stop

    print(
        f"BrainSegFounder web app on http://{args.host}:{args.port}/ (a scene per session, at most {args.sessions})",
        file=sys.stderr,
        flush=True,
    )
    serve(_app_args(args), args.host, args.port, args.sessions, args.session_idle)
    return {"message": "web app stopped"}


def _model_manager(registry_file):
    from BrainSegFounderSlicerLib.models import REGISTRY_FILE, ModelManager

    return ModelManager(Path(registry_file), resources=REGISTRY_FILE.parent) if registry_file else None
