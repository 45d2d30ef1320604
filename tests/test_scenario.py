"""Scenario files are checked when they load, before anything runs: every key, type, number and
"@step" reference; an invalid file is one ScenarioError naming the file, the key and the fix (exit 2).
The loader is fuzzed: any document gives a Scenario or a ScenarioError, never a traceback."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from addrinuse.experiments import loads, validate
from addrinuse.experiments.params import REQUIRED
from addrinuse.experiments.scenario import ScenarioError

HEAD = 'name = "t"\npurpose = "p"\nexplain = "e"\n'

# -- validation -------------------------------------------------------------------------------------

INVALID = [
    ('[[step]]\nid = "a"\ndo = "teleport"\n', "step[0].do", "unknown step 'teleport'"),
    ('[[step]]\nid = "a"\ndo = "connect"\n', "step[0].to", "missing"),
    ('[[step]]\nid = "a"\ndo = "server"\nreuseaddr = "yes"\n', "step[0].reuseaddr", "is a string: give true or false"),
    ('[[step]]\nid = "a"\ndo = "connect"\nto = "@nobody"\n', "step[0].to", "names no earlier step"),
    ('[[step]]\nid = "a"\ndo = "server"\nclose = "sometimes"\n', "step[0].close", "not allowed"),
    ('[[step]]\nid = "a"\ndo = "table"\nport = "new"\nstates = ["WAITING"]\n', "step[0].states", "not a TCP state"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = "eighty"\n', "step[0].port", "is not a port"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = "99999"\n', "step[0].port", "'99999' is not a port: use 1-65535"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = 0\n', "step[0].port", "0 is not a port"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = 70000\n', "step[0].port", "70000 is not a port"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = true\n', "step[0].port", "True is not a port"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ninterval = -1\n', "step[0].interval",
     "-1 is out of range: give seconds > 0 and <= 10"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ntimeout = nan\n', "step[0].timeout", "nan is not a finite"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ntimeout = inf\n', "step[0].timeout", "inf is not a finite"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ntimeout = 0\n', "step[0].timeout", "0 is out of range"),
    ('[[step]]\nid = "a"\ndo = "table"\nport = "new"\nwait_for = -1\n', "step[0].wait_for", "-1 is out of range"),
    ('[[step]]\nid = "s"\ndo = "server"\n[[step]]\nid = "a"\ndo = "connect"\nto = "@s"\ncount = 0\n',
     "step[1].count", "0 is out of range: give a whole number from 1 to 1000"),
    ('[[step]]\nid = "s"\ndo = "server"\n[[step]]\nid = "a"\ndo = "connect"\nto = "@s"\ncount = 1e3\n',
     "step[1].count", "1000.0 is a number: give a whole number"),
    ('[[step]]\nid = "s"\ndo = "server"\n[[step]]\nid = "a"\ndo = "connect"\nto = "@s"\n'
     'count = 99999999999999999\n', "step[1].count", "is out of range"),
    ('[[step]]\nid = "a"\ndo = "server"\nready_timeout = -0.5\n', "step[0].ready_timeout", "out of range"),
    ('[[step]]\nid = "a"\ndo = "close_sequence"\nhold = 1e9\n', "step[0].hold", "out of range"),
    ('[[step]]\nid = "a"\ndo = "server"\ncommand = ["python3", "-m", "http.server"]\n', "step[0].command",
     "has no {port}"),
    ('[[step]]\nid = "a"\ndo = "server"\ncommand = []\n', "step[0].command", "is empty: give the command as a list"),
    ('[[step]]\nid = "a"\ndo = "server"\ncommand = ["x", "{port}"]\nreuseaddr = true\n', "step[0]",
     "reuseaddr set with a command"),
    ('[[step]]\nid = "a"\ndo = "server"\nstop_signal = "STOP"\n', "step[0].stop_signal", "not allowed"),
    ('[[step]]\nid = "a"\ndo = "listen"\n[[step]]\nid = "b"\ndo = "kill"\nserver = "@a"\n', "step[1].server",
     "@a is a 'listen' step: refer to a step that does server"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = "@a"\n', "step[0].port", "names no earlier step"),
    ('[[step]]\nid = "a"\ndo = "listen"\n[[step]]\nid = "a"\ndo = "listen"\n', "step[1].id", "used twice"),
    ('[[step]]\nid = "a b"\ndo = "listen"\n', "step[0].id", "is not a valid id"),
]
INVALID_EXPECT = [
    ('[[expect]]\nstep = "a"\ncount = -1\n', "expect[0].count", "-1 is out of range"),
    ('[[expect]]\nstep = "a"\nbetween = [5, 1]\n', "expect[0].between", "is not a range"),
    ('[[expect]]\nstep = "a"\nbetween = [0, nan]\n', "expect[0].between", "nan is not a finite number"),
    ('[[expect]]\nstep = "a"\nerror = "EADDRINUZE"\n', "expect[0].error", "is not an errno name"),
    ('[[expect]]\nstep = "a"\nholder = "@a.nothing"\n', "expect[0].holder", "gives no nothing"),
    ('[[expect]]\nstep = "zz"\nok = true\n', "expect[0].step", "'zz' is not a step id"),
    ('[[expect]]\nstep = "a"\n', "expect[0]", "checks nothing"),
    ('[[expect]]\nstep = "a"\norder = ["LISTEN"]\n', "expect[0].end", "missing"),
]
TOP = [
    ('name = "t"\npurpose = "p"\nexplain = "e"\nstates = ["WAITING"]\n', "states", "'WAITING' is not a TCP state"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\nrequires = ["gpu"]\n', "requires", "is not a list of requirements"),
    ('name = "T T"\npurpose = "p"\nexplain = "e"\n', "name", "is not a valid name"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\ncolour = 1\n', "colour", "unknown key"),
    ('name = "t"\npurpose = "p"\n', "explain", "missing"),
    ('name = "t"\npurpose = ""\nexplain = "e"\n', "purpose", "is empty"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\nslow = 1\n', "slow", "give true or false"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\n[step]\nid = "a"\n', "step", "is not a list"),
    ('name = "t"\n[[step\n', "toml", "fix the TOML syntax"),
]
CASES = [(HEAD + body + '\n[[expect]]\nstep = "a"\nok = true\n', key, problem) for body, key, problem in INVALID] + \
    [(HEAD + '[[step]]\nid = "a"\ndo = "listen"\n\n' + body, key, problem) for body, key, problem in INVALID_EXPECT] + \
    [(body + '[[step]]\nid = "a"\ndo = "listen"\n[[expect]]\nstep = "a"\nok = true\n' if "[step" not in body else body,
      key, problem) for body, key, problem in TOP]


@pytest.mark.parametrize("text,key,problem", CASES, ids=[f"{i}-{k}" for i, (_, k, _) in enumerate(CASES)])
def test_invalid_files_are_refused_naming_file_key_and_fix(text, key, problem):
    with pytest.raises(ScenarioError) as info:
        loads(text, "bad.toml")
    message = str(info.value)
    assert message.startswith(f"bad.toml: {key}: ") and problem in message, message
    assert len(message.split(": ")) >= 4 and "\n" not in message  # file: key: problem: fix


# -- fuzzing the loader: any document gives a Scenario or one ScenarioError, never a traceback -------


ATOMS = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=8),
    st.sampled_from(["new", "@a", "@b", "@a.pid", "@a.port", "@zz", "99999", "0", "80", "{port}", "TIME_WAIT",
                     "LISTEN", "gone", "EADDRINUSE", "bind", "server-first", "TERM", "poll", "trace", "active",
                     "local", "listen", "server", "\0"]))
VALUES = st.one_of(ATOMS, st.lists(ATOMS, max_size=4), st.dictionaries(st.text(max_size=4), ATOMS, max_size=2))


def _example(kind):
    """A value `kind` accepts, so that generated documents get past the first key now and then."""
    from addrinuse.experiments import params as P

    kind = kind.inner if isinstance(kind, P.Optional) else kind
    return {P.Port: "new", P.Ref: "@a", P.Seconds: 1.0, P.Count: getattr(kind, "low", 1), P.Flag: True,
            P.States: ["LISTEN"], P.Argv: ["x", "{port}"], P.Errno: "EADDRINUSE", P.Range: [0.0, 1.0]}.get(
        type(kind), (getattr(kind, "choices", None) or ["x"])[0])


def _value(draw, kind):
    return draw(st.sampled_from([_example(kind), _example(kind), _example(kind), None])) or draw(VALUES)


@st.composite
def steps(draw, index: int):
    """A step of a registered action with some of its own parameters (and now and then a stranger)."""
    from addrinuse.experiments.actions import actions

    table = actions()
    name = draw(st.sampled_from(sorted(table)))
    required = [k for k, kind in table[name].params.items() if kind.default is REQUIRED and draw(st.integers(0, 9))]
    keys = required + draw(st.lists(st.sampled_from(sorted(table[name].params) + ["stranger"]), max_size=4,
                                    unique=True).map(lambda ks: [k for k in ks if k not in required]))
    spec = table[name].params
    step = {"id": draw(st.sampled_from(["a", "b", "a"][index:index + 1] + ["a b", 3])) if not draw(
        st.integers(0, 5)) else ["a", "b", "c"][index], "do": name,
        **{k: _value(draw, spec[k]) if k in spec else draw(VALUES) for k in keys}}
    return step if draw(st.integers(0, 9)) else draw(st.one_of(VALUES, st.just({})))


@st.composite
def expectations(draw):
    from addrinuse.experiments.checks import EXPECT_KEYS

    keys = draw(st.lists(st.sampled_from(sorted(EXPECT_KEYS) + ["stranger"]), max_size=3, unique=True))
    return {"step": draw(st.sampled_from(["a", "a", "b", "zz"])), "ok": True,
            **{k: _value(draw, EXPECT_KEYS[k]) if k in EXPECT_KEYS else draw(VALUES) for k in keys}}


@st.composite
def documents(draw):
    doc = {"name": "fuzz", "purpose": "p", "explain": "e",
           "step": [draw(steps(i)) for i in range(draw(st.integers(1, 3)))],
           "expect": draw(st.lists(expectations(), min_size=1, max_size=3))}
    for key in draw(st.lists(st.sampled_from(["name", "purpose", "explain", "states", "requires", "slow", "step",
                                              "expect", "other"]), max_size=1 if draw(st.integers(0, 3)) else 0)):
        doc[key] = draw(VALUES)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_fuzz_validate_gives_a_scenario_or_a_scenario_error(doc):
    try:
        scenario = validate(doc, "fuzz.toml")
    except ScenarioError as err:
        assert str(err).startswith("fuzz.toml: ") and "\n" not in str(err)
        event(f"refused at {err.key.split('.')[0].split('[')[0]}")
    else:
        assert scenario.steps and scenario.expect
        event("valid")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('[]="@{}.,\n #-_01ainfstepxc\\\'')), max_size=80))
def test_fuzz_loads_on_any_text(text):
    try:
        loads(text, "fuzz.toml")
    except ScenarioError:
        pass
