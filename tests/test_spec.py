"""PolicySpec, ObsBuilder and ActionMapper: the robot-side contract, in numpy and torch alike."""

import numpy as np
import pytest
import torch

from deploy.action_mapper import ActionMapper
from deploy.obs_builder import ObsBuilder
from deploy.spec import ActionSpec, ObsTerm, PolicySpec, SpecError


def small_spec(**kw) -> PolicySpec:
    args = dict(
        robot="bot",
        task="t",
        control_hz=50.0,
        obs=(ObsTerm("gyro", ("x", "y"), (2.0, 2.0), clip=3.0), ObsTerm("last_action", ("a",), (1.0,), history=3)),
        action=ActionSpec("joint_position", ("a",), (0.5,), (1.0,), 1.0, (0.0,), (1.2,)),
    )
    args.update(kw)
    return PolicySpec(**args)


def test_json_round_trip_and_names():
    spec = small_spec()
    assert PolicySpec.from_json(spec.to_json()) == spec
    assert spec.obs_dim == 5
    assert spec.obs_names == ["gyro[x]", "gyro[y]", "last_action[a]", "last_action[a]@t-1", "last_action[a]@t-2"]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(control_hz=0.0), "control_hz"),
        (dict(version=99), "version 99"),
        (dict(action=ActionSpec("warp_drive", ("a",), (1.0,), (0.0,), 1.0, (0.0,), (1.0,))), "action.type"),
        (dict(action=ActionSpec("joint_torque", ("a", "b"), (1.0,), (0.0,), 1.0, (0.0,), (1.0,))), "action.scale"),
        (dict(obs=(ObsTerm("g", ("x",), (1.0, 2.0)),)), "obs term 'g'"),
    ],
)
def test_invalid_spec_names_the_problem(change, message):
    with pytest.raises(SpecError, match=message):
        small_spec(**change)


def test_malformed_json_is_a_spec_error():
    with pytest.raises(SpecError, match="not valid JSON"):
        PolicySpec.from_json("{oops")
    with pytest.raises(SpecError, match="malformed"):
        PolicySpec.from_json('{"robot": "x"}')


def test_mismatch_names_what_differs():
    a = small_spec()
    b = small_spec(action=ActionSpec("joint_position", ("b",), (0.5,), (1.0,), 1.0, (0.0,), (1.2,)))
    with pytest.raises(SpecError, match="action names/order"):
        a.check_compatible(b)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_obs_builder_scales_clips_and_stacks_history_term_major(kind):
    spec = small_spec()
    if kind == "numpy":
        mk, like = (lambda v: np.asarray(v, np.float32)), None
    else:
        mk, like = (lambda v: torch.tensor(v, dtype=torch.float32)), torch.zeros(1)
    b = ObsBuilder(spec, batch=2, like=like)
    o1 = b({"gyro": mk([[1.0, 5.0], [0.0, 0.0]]), "last_action": mk([[1.0], [2.0]])})
    # after a reset the first frame fills the history; gyro 5*2=10 clips to 3
    np.testing.assert_allclose(np.asarray(o1), [[2, 3, 1, 1, 1], [0, 0, 2, 2, 2]])
    o2 = b({"gyro": mk([[0.0, 0.0], [0.0, 0.0]]), "last_action": mk([[3.0], [4.0]])})
    np.testing.assert_allclose(np.asarray(o2)[:, 2:], [[3, 1, 1], [4, 2, 2]])  # newest first
    b.reset([1])
    o3 = b({"gyro": mk([[0.0, 0.0], [0.0, 0.0]]), "last_action": mk([[5.0], [6.0]])})
    np.testing.assert_allclose(np.asarray(o3)[:, 2:], [[5, 3, 1], [6, 6, 6]])


def test_obs_builder_rejects_missing_or_misshapen_signals():
    b = ObsBuilder(small_spec(), batch=1)
    with pytest.raises(SpecError, match="no signal 'last_action'"):
        b({"gyro": np.zeros((1, 2), np.float32)})
    with pytest.raises(SpecError, match="signal 'gyro' has shape"):
        b({"gyro": np.zeros((1, 3), np.float32), "last_action": np.zeros((1, 1), np.float32)})


def test_action_mapper_clips_then_limits():
    m = ActionMapper(small_spec())
    cmd = m(np.array([[0.0], [1.0], [5.0], [-5.0]], np.float32))
    # offset 1 + 0.5 * clip(a, -1, 1), then hard limits [0, 1.2]
    np.testing.assert_allclose(cmd[:, 0], [1.0, 1.2, 1.2, 0.5])
    mt = ActionMapper(small_spec(), like=torch.zeros(1))
    np.testing.assert_allclose(mt(torch.tensor([[0.0], [1.0], [5.0], [-5.0]])).numpy()[:, 0], cmd[:, 0])
