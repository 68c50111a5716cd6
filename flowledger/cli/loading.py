"""Loading the user's workflow code: a PATH_OR_MODULE imported and its
workflows checked before a store is opened, then registered on the command's
engine."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import flowledger as fl
from flowledger.authoring.definition import PROVIDE_TOOLS
from flowledger.authoring.registration import checked_tools
from flowledger.cli.exits import CommandError
from flowledger.cli.store import CommandEngine


def import_workflow_module(target: str) -> ModuleType:
    """Import the user's workflow code from a .py path or a dotted module name."""
    path = Path(target)
    if target.endswith(".py") or "/" in target or "\\" in target or path.exists():
        if path.is_dir():
            raise CommandError(f"{target!r} is a folder; give the .py file that defines the "
                               "workflow")
        if not path.is_file():
            raise CommandError(f"no such file: {target!r}")
        # Let the file import the modules next to it, as `python file.py` would.
        sys.path.insert(0, str(path.resolve().parent))
        name = f"flowledger_workflow_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise CommandError(f"cannot load {target!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            raise CommandError(f"{target!r} does not compile: {_syntax_error(e)}") from e
        except ImportError as e:
            raise CommandError(f"{target!r} cannot be imported: {_import_error(e, path)}"
                               ) from e
        except fl.FlowledgerError:
            raise  # says what it means (a DefinitionError at a decorator, say)
        except Exception as e:
            raise _raised(repr(target), "while it was imported", e,
                          f"`python {target}` shows the whole traceback") from e
        except SystemExit as e:
            raise _exited(repr(target), "while it was imported", e) from e
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name is not None and (target == e.name or target.startswith(e.name + ".")):
            raise CommandError(f"no module named {target!r}; give a .py file or an importable "
                               "module name") from e
        raise CommandError(f"module {target!r} cannot be imported: {_import_error(e)}") from e
    except SyntaxError as e:
        raise CommandError(f"module {target!r} does not compile: {_syntax_error(e)}") from e
    except ImportError as e:
        raise CommandError(f"module {target!r} cannot be imported: {_import_error(e)}") from e
    except fl.FlowledgerError:
        raise
    except Exception as e:
        raise _raised(f"module {target!r}", "while it was imported", e,
                      f"`python -c 'import {target}'` shows the whole traceback") from e
    except SystemExit as e:
        raise _exited(f"module {target!r}", "while it was imported", e) from e


def _syntax_error(e: SyntaxError) -> str:
    """Where a syntax error is and what it is, on one line (as Python's own last lines)."""
    where = f"{e.filename or '?'}, line {e.lineno}" if e.lineno else (e.filename or "?")
    return f"{type(e).__name__} at {where}: {e.msg}"


def _import_error(e: ImportError, path: Path | None = None) -> str:
    """An import that failed inside the user's code: which, and from where."""
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if path is None or Path(f.filename).resolve() == path.resolve()]
    where = f" (at {own[-1].filename}, line {own[-1].lineno})" if own else ""
    return f"{type(e).__name__}: {e}{where}"


def _raised(what: str, when: str, e: Exception, whole: str) -> CommandError:
    """The user's code raised while the command loaded it: what, and the line
    of their code it came from, on one line."""
    frame = _deepest_own_frame(e)
    where = f" (at {frame.filename}, line {frame.lineno}: {frame.line})" if frame else ""
    return CommandError(f"{what} raised {type(e).__name__} {when}: {e}{where}. Nothing was "
                        f"written; mend the code and run the command again ({whole})")


def _exited(what: str, when: str, e: SystemExit) -> CommandError:
    """The user's code called sys.exit as the command loaded it: a command that
    ended there, silently and with its code, looked like one that ran (a
    worker under `Restart=always` would start again and again)."""
    frame = _deepest_own_frame(e)
    where = f" (at {frame.filename}, line {frame.lineno}: {frame.line})" if frame else ""
    return CommandError(f"{what} called sys.exit({e.code!r}) {when}{where}. Nothing was "
                        "written; a workflow module is imported, not run: keep a script's "
                        "own code under `if __name__ == \"__main__\":`")


def _deepest_own_frame(e: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the user's own code: not flowledger's, not
    Python's import machinery, not an installed library's."""
    ours = Path(fl.__file__).resolve().parent
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    own = []
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename.startswith("<"):
            continue
        path = Path(frame.filename).resolve()
        if path.is_relative_to(ours) or any(path.is_relative_to(p) for p in installed):
            continue
        own.append(frame)
    return own[-1] if own else None


class Definitions:
    """A module's workflows and their tools, checked (every pre-flight check
    that needs no store) before any store is opened: a mistake in the code
    leaves no store behind, nor anything in one."""

    def __init__(self, target: str, provide: str = PROVIDE_TOOLS) -> None:
        self.target = target
        self.provide = provide  # how the module gives a missing tool
        self.registrations: dict[str, tuple[fl.Workflow, list[fl.Tool]]] = {}

    @property
    def names(self) -> list[str]:
        return list(self.registrations)

    def register(self, workflow: fl.Workflow, tools: Iterable[fl.Tool] = ()) -> None:
        """What a module's register(engine) calls."""
        by_name = checked_tools(workflow, tools, self.provide)  # reads `tools` once
        self.registrations[workflow.name] = (workflow, list(by_name.values()))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise CommandError(
            f"{self.target!r}: its register(engine) uses engine.{name}. The command calls "
            "register(engine) to learn the module's workflows before it opens the store, and "
            "it may only call engine.register(workflow, tools=[...]) there; do anything "
            "else where the module is run as a program of its own")


def load_definitions(target: str) -> Definitions:
    """Import PATH_OR_MODULE and check its workflows: the module's
    register(engine), given a Definitions, or its workflows with its TOOLS."""
    module = import_workflow_module(target)
    register = getattr(module, "register", None)
    if callable(register):
        definitions = Definitions(target)
        try:
            register(definitions)
        except fl.FlowledgerError:
            raise  # a ConfigurationError it raises says what it means
        except Exception as e:
            raise _raised(repr(target), "in its register(engine)", e,
                          "register(engine) called on an fl.Engine in a program of your "
                          "own shows the whole traceback") from e
        except SystemExit as e:
            raise _exited(repr(target), "in its register(engine)", e) from e
    else:
        definitions = Definitions(target, "list it in the module's TOOLS = [...]")
        workflows = list({id(v): v for v in vars(module).values()
                          if isinstance(v, fl.Workflow)}.values())
        for workflow in workflows:
            definitions.register(workflow, tools=getattr(module, "TOOLS", []))
    if not definitions.registrations:
        raise CommandError(f"{target!r} registers no workflow: define module-level "
                           "fl.Workflow objects (with TOOLS = [...]) or register(engine)")
    return definitions


def register_definitions(engine: CommandEngine, definitions: Definitions) -> list[str]:
    """Register checked workflows on the command's engine: their names, in order."""
    for workflow, tools in definitions.registrations.values():
        engine.register(workflow, tools)
    return list(engine.registered_names)


def load(engine: CommandEngine, target: str) -> list[str]:
    """Import PATH_OR_MODULE and register its workflows: their names, in order."""
    return register_definitions(engine, load_definitions(target))
