"""The plugin system: hook registration, duplicates, broken plugins, disabling."""

from __future__ import annotations

import types

import attrs
import pytest

import diffsampler as ds
from diffsampler.registry import discover


@attrs.frozen(kw_only=True)
class _Opts:
    k: int = ds.option(2, help="a number", validator=ds.in_range(1, 4))


class _Solver(ds.ODESolver):
    """A test solver."""

    Options = _Opts

    def step(self, run, x, i):
        return x + (run.sigmas[i + 1] - run.sigmas[i]) * run.derivative(x, run.sigmas[i])


def _plugin(name: str = "s", **extra):
    module = types.SimpleNamespace()

    @ds.hookimpl
    def register_solvers(register):
        register(name, _Solver, options=_Opts)

    module.register_solvers = register_solvers
    for key, value in extra.items():
        setattr(module, key, value)
    return module


def test_hook_registration_on_fresh_manager_records_origin():
    reg = discover(entry_points=False, plugins=[("mine", _plugin("fast"))])
    c = reg.get("solver", "fast")
    assert (c.plugin, c.name, c.kind) == ("mine", "fast", "solver")
    assert c.summary == "A test solver."  # first docstring line when no summary is given
    solver = reg.create("solver", "fast", k=3)
    assert solver.options.k == 3
    assert isinstance(solver, ds.Solver)


def test_duplicate_names_are_an_error_naming_both_plugins_and_qualifier_selects():
    reg = discover(entry_points=False, plugins=[("a", _plugin("x")), ("b", _plugin("x"))])
    with pytest.raises(ds.DuplicateComponentError, match="'a' and 'b'"):
        reg.get("solver", "x")
    assert reg.get("solver", "b:x").plugin == "b"
    assert reg.get("solver", "a:x").plugin == "a"
    assert [c.plugin for c in reg.components("solver")] == ["a", "b"]


def test_unknown_name_suggests_close_matches():
    reg = discover(entry_points=False, plugins=[("a", _plugin("ipndm"))])
    with pytest.raises(ds.UnknownComponentError, match="did you mean 'ipndm'"):
        reg.get("solver", "ipdnm")


def test_bad_option_values_and_names_are_clear():
    reg = discover(entry_points=False, plugins=[("a", _plugin("x"))])
    with pytest.raises(ds.OptionError, match=r"k must be in 1\.\.4, got 9"):
        reg.create("solver", "x", k=9)
    with pytest.raises(ds.OptionError, match=r"no option 'kk'.*did you mean 'k'"):
        reg.create("solver", "x", kk=1)
    assert reg.create("solver", "x", k="3").options.k == 3  # CLI strings are converted
    with pytest.raises(ds.OptionError, match="expects int"):
        reg.create("solver", "x", k="three")


def test_plugin_raising_in_hook_is_reported_and_others_survive():
    @ds.hookimpl
    def register_schedules(register):
        register("half", _Solver)
        raise RuntimeError("boom")

    broken = types.SimpleNamespace(register_schedules=register_schedules)
    reg = discover(entry_points=False, plugins=[("bad", broken), ("good", _plugin("ok"))])
    assert reg.get("solver", "ok").plugin == "good"
    (failure,) = reg.failures
    assert (failure.plugin, failure.stage) == ("bad", "register_schedules")
    assert "RuntimeError: boom" in failure.error
    # a hook that raises registers nothing, not half its components
    assert reg.names("schedule") == []


def test_a_name_registered_twice_by_one_hook_registers_nothing_of_it():
    @ds.hookimpl
    def register_solvers(register):
        register("once", _Solver)
        register("twice", _Solver)
        register("twice", _Solver)

    reg = discover(entry_points=False, plugins=[("p", types.SimpleNamespace(register_solvers=register_solvers))])
    assert "registered solver 'twice' twice" in reg.failures[0].error
    assert reg.names("solver") == []


def test_options_come_from_the_factorys_own_options_class():
    @attrs.frozen(kw_only=True)
    class Other:
        g: int = 1

    @ds.hookimpl
    def implicit(register):
        register("implicit", _Solver)  # _Solver.Options is used

    @ds.hookimpl
    def clash(register):
        register("clash", _Solver, options=Other)

    reg = discover(entry_points=False, plugins=[("p", types.SimpleNamespace(register_solvers=implicit)),
                                                ("q", types.SimpleNamespace(register_solvers=clash))])
    assert reg.get("solver", "implicit").options is _Opts
    assert reg.create("solver", "implicit", k=3).options.k == 3
    assert "is not _Solver.Options" in reg.failures[0].error
    assert reg.names("solver") == ["implicit"]


def test_a_plugin_command_cannot_replace_a_builtin_one():
    import typer

    from diffsampler.cli import build_app

    def hello():
        """Say hello."""

    @ds.hookimpl
    def register_commands(app):
        app.command("hello")(hello)
        app.command("sample")(hello)

    gits = typer.Typer()

    @ds.hookimpl
    def register_group(app):
        app.add_typer(gits, name="gits")  # the built-in GITS plugin's group

    reg = discover(entry_points=True, plugins=[("p", types.SimpleNamespace(register_commands=register_commands)),
                                               ("q", types.SimpleNamespace(register_commands=register_group))])
    ds.reset_registry(reg)
    try:
        app = build_app()
        names = [c.name or c.callback.__name__ for c in app.registered_commands]
        assert names.count("sample") == 1 and "hello" not in names  # all or nothing
        (failure,) = [f for f in reg.failures if f.plugin == "p"]
        assert "command 'sample' already exists" in failure.error
        (failure,) = [f for f in reg.failures if f.plugin == "q"]  # whatever the discovery order
        assert "command 'gits' already exists" in failure.error
        groups = [g for g in app.registered_groups if g.name == "gits"]
        assert len(groups) == 1 and groups[0].typer_instance is not gits
    finally:
        ds.reset_registry(None)


def test_invalid_registration_is_reported():
    @ds.hookimpl
    def register_models(register):
        register("has space", lambda: None)

    reg = discover(entry_points=False, plugins=[("p", types.SimpleNamespace(register_models=register_models))])
    assert "invalid model name" in reg.failures[0].error


def test_hookimpl_with_wrong_signature_is_reported():
    @ds.hookimpl
    def register_solvers(register, extra):
        pass

    reg = discover(entry_points=False, plugins=[("p", types.SimpleNamespace(register_solvers=register_solvers))])
    assert reg.failures and reg.failures[0].stage == "register"


def test_disabled_plugins_are_skipped(monkeypatch):
    reg = discover(entry_points=False, plugins=[("a", _plugin("x"))], disabled=["a"])
    assert reg.names("solver") == []
    monkeypatch.setenv("DIFFSAMPLER_DISABLE_PLUGINS", "solvers, models")
    reg = discover()
    assert "euler" not in reg.names("solver")
    assert "gmm" not in reg.names("model")
    assert "polynomial" in reg.names("schedule")


def test_builtin_families_are_entry_points():
    reg = discover()
    plugins = {c.plugin for c in reg.components()}
    assert {"solvers", "schedules", "models"} <= plugins
    for c in reg.components():
        if c.plugin in {"solvers", "schedules", "models"}:
            assert c.distribution == "diffsampler"
            assert c.version == ds.__version__


def test_broken_entry_point_is_reported(monkeypatch):
    import importlib.metadata as md

    real = md.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        if kw.get("group") == "diffsampler":
            eps.append(md.EntryPoint("broken", "diffsampler_no_such_module", "diffsampler"))
        return eps

    monkeypatch.setattr(md, "entry_points", fake)
    reg = discover()
    failure = next(f for f in reg.failures if f.plugin == "broken")
    assert failure.stage == "import" and "ModuleNotFoundError" in failure.error
    assert "euler" in reg.names("solver")


def test_builtins_conform_to_protocols():
    import torch

    reg = discover()
    for c in reg.components("solver"):
        assert isinstance(c.create(), ds.Solver), c.name
    for c in reg.components("schedule"):
        assert isinstance(c.create(), ds.Schedule), c.name
    model = ds.get_model("gmm")
    assert isinstance(model, ds.Denoiser)
    assert model(torch.zeros(2, *model.shape), torch.ones(2)).shape == (2, *model.shape)


def test_importing_the_api_and_listing_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, diffsampler as ds; ds.list_components(); import diffsampler.cli; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_missing_required_option_is_named_with_its_help():
    @attrs.frozen(kw_only=True)
    class Needs:
        path: str = attrs.field(metadata={"help": "the weights file"})

    @ds.hookimpl
    def register_models(register):
        register("needy", lambda path: path, options=Needs)

    reg = discover(entry_points=False, plugins=[("p", types.SimpleNamespace(register_models=register_models))])
    with pytest.raises(ds.OptionError, match=r"^model 'needy' needs option 'path'; on the command line: --model-opt path=\.\.\.$"):
        reg.create("model", "needy")
    assert reg.create("model", "needy", path="w.pt") == "w.pt"


def test_builtin_command_groups_register_first_whatever_the_discovery_order():
    import typer

    import diffsampler.plugins.gits as gits_plugin
    from diffsampler.registry import Registry

    taker = typer.Typer()

    @ds.hookimpl
    def register_commands(app):
        app.add_typer(taker, name="gits")

    reg = Registry()
    reg.add_plugin(types.SimpleNamespace(register_commands=register_commands), "early", distribution="third-party")
    reg.add_plugin(gits_plugin, "gits", distribution="diffsampler")
    app = typer.Typer()
    reg.register_commands(app)
    (group,) = app.registered_groups
    assert group.typer_instance is not taker  # the built-in one
    assert [f.plugin for f in reg.failures] == ["early"] and "command 'gits' already exists" in reg.failures[0].error
