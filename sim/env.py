"""The batched training environment: what every task shares.

A task is a config of named terms (sim.terms): rewards, terminations, randomization events, commands,
curricula and the critic's privileged terms; this class builds them from the config and runs them. A task's env
subclass supplies what is its own: its PolicySpec, how it resets its state, how a command reaches the
physics, and the sensor noise of each observation term. Its robot's readings (sim.readings) are
computed once per step from the MuJoCo state; the observation terms are the robot runtime's own
functions of them (deploy.signals.TERMS), observations are built by deploy's ObsBuilder and actions
mapped by deploy's ActionMapper: the same code the robot runs.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import torch

from config.validate import ConfigError
from deploy.action_mapper import ActionMapper
from deploy.arrays import constant_like
from deploy.obs_builder import ObsBuilder
from deploy.signals import default_joint_pos, term_functions
from deploy.spec import PolicySpec
from sim.symmetry import mirror_maps
from sim.terms import lookup
from sim.terms.commands import COMMANDS
from sim.terms.curricula import CURRICULA
from sim.terms.events import EVENTS
from sim.terms.observations import CRITIC_TERMS
from sim.terms.rewards import REWARDS
from sim.terms.terminations import TERMINATIONS

if TYPE_CHECKING:
    from sim.backends.mujoco_cpu import MujocoCpuBackend
    from sim.backends.mujoco_warp import MujocoWarpBackend
    from sim.robots import RobotModel


@contextmanager
def torch_threads(n: int):
    """Run the block on `n` torch threads, then restore the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_torch_thread():
    """Step envs with one torch thread: their tensors are small, so one thread is fastest and leaves
    the cores to MuJoCo's threads. Training collects, evaluation and the sim benchmark all step so."""
    return torch_threads(1)


class BatchedEnv(ABC):
    """`num_envs` envs stepped together. All tensors are `(num_envs, ...)` on `device`.

    step(action) -> obs {"policy", "critic"}, reward, terminated, truncated, extras.
    Envs that end are reset inside `step`; the obs returned for them are their first obs.
    """

    cfg: Any  # the task's config: its terms (rewards, terminations, events, curricula, critic) and noise
    spec: PolicySpec
    backend: MujocoCpuBackend | MujocoWarpBackend  # the task's physics (sim.backends), set before BatchedEnv.__init__
    robot: RobotModel  # the task's robot (sim.robots), set with the backend
    max_episode_steps: int
    decimation: int = 1  # physics steps per control step
    curriculum_levels: tuple[str, ...] = ()  # the curriculum levels the task reads (`level(name)`)

    def __init__(self, num_envs: int, device: str | torch.device, seed: int):
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.env_ids = torch.arange(num_envs, device=self.device)
        self.control_dt_s = 1.0 / self.spec.control_hz
        like = torch.zeros(1, device=self.device)
        self.action_mapper = ActionMapper(self.spec, like)
        self.policy_obs = ObsBuilder(self.spec, num_envs, like)
        n_act = self.spec.action_dim
        self.action = torch.zeros(num_envs, n_act, device=self.device)  # last raw policy action
        self.prev_action = self.action.clone()
        self.episode_step = torch.zeros(num_envs, dtype=torch.long, device=self.device)  # the time limit's clock
        self.episode_start_step = torch.zeros_like(self.episode_step)  # its value when the episode began
        self.terminated = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self.force_scale = torch.ones(num_envs, 1, device=self.device)  # on forces the env applies (events.mass_scale)
        self.nan_resets = 0  # envs reset because the physics produced NaN/inf
        self.record_metrics = False  # evaluation sets it: extras["metrics"] every step
        # An off-policy learner sets it: extras["final_obs"] on steps where an episode hits its time limit
        # (the learner bootstraps from where the episode was cut, not from the next episode's start).
        self.keep_final_obs = False
        # Called before each physics step with the command about to be applied; returns the command to
        # apply. A simulated robot swaps in the newest command there, paces real time and publishes
        # its sensors at the physics rate. Training leaves it None.
        self.physics_step_hook = None
        self._gaussian_noise = self.cfg.noise.distribution == "gaussian"  # read once, not every step
        # Observation terms: the robot's functions of the readings. The terms with sensor noise are laid
        # out side by side, in spec order, for one noise draw and one bias add per step.
        self.readings: dict[str, torch.Tensor] = {}  # the task keeps it current: (num_envs, size) each
        self._term_fns = term_functions(self.spec)
        self._default_joint_pos = constant_like(default_joint_pos(self.spec), like)
        noise = self._noise_std_by_term()
        sizes = {t.name: t.size for t in self.spec.obs}
        self._noisy_terms = [t.name for t in self.spec.obs if t.name in noise]
        unknown = sorted(set(noise) - set(sizes))
        if unknown:
            raise ConfigError(f"sensor noise for observation terms the policy does not have: {unknown}")
        self._noise_std = constant_like([noise[n] for n in self._noisy_terms for _ in range(sizes[n])], like)
        self._noisy_cols, start = {}, 0
        for n in self._noisy_terms:
            self._noisy_cols[n] = slice(start, start + sizes[n])
            start += sizes[n]
        self.sensor_bias = torch.zeros(num_envs, start, device=self.device)  # per-episode offsets (events.sensor_bias)
        self._build_terms()
        self.latency_steps = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._command_queue = torch.zeros(num_envs, self.max_latency_steps + 1, n_act, device=self.device)

    def _build_terms(self) -> None:
        """The config's terms, bound to this env; each checked against its function (sim.terms.lookup)."""
        cfg, dev = self.cfg, self.device

        def bind(registry, kind, group, name, term):
            return lookup(registry, kind, f"task.{group}.{name}", term.func, term.params)

        self.reward_weights = {name: t.weight for name, t in cfg.rewards.items()}
        self.reward_terms: dict[str, Callable[[], torch.Tensor]] = {
            name: functools.partial(bind(REWARDS, "reward", "rewards", name, t), self, **t.params)
            for name, t in cfg.rewards.items()
            if t.weight != 0
        }
        # Weights are per second of simulated time, so they do not depend on the control rate.
        self._reward_scale = torch.tensor(
            [t.weight * self.control_dt_s for t in cfg.rewards.values() if t.weight != 0], device=dev
        )
        self._episode_sums = torch.zeros(self.num_envs, len(self.reward_terms), device=dev)
        self.termination_terms = {
            name: functools.partial(bind(TERMINATIONS, "termination", "terminations", name, t), self, **t.params)
            for name, t in cfg.terminations.items()
        }
        self.critic_terms = []
        for name in cfg.critic:
            if name not in CRITIC_TERMS:
                raise ConfigError(f"task.critic: no critic term '{name}' (have: {', '.join(sorted(CRITIC_TERMS))})")
            self.critic_terms.append(CRITIC_TERMS[name])
        events = {name: bind(EVENTS, "event", "events", name, t)(self, **t.params) for name, t in cfg.events.items()}
        # every value a startup or reset event draws is a named column of `params` (the critic sees them all)
        self.param_names: tuple[str, ...] = ()
        self._event_cols: dict[str, slice] = {}
        for mode in ("startup", "reset"):
            for name, e in events.items():
                if e.mode == mode:
                    self._event_cols[name] = slice(len(self.param_names), len(self.param_names) + len(e.columns))
                    self.param_names += e.columns
        repeated = sorted({c for c in self.param_names if self.param_names.count(c) > 1})
        if repeated:
            raise ConfigError(f"task.events: two events randomize {repeated}")
        self.startup_events = {n: e for n, e in events.items() if e.mode == "startup"}
        self.reset_events = {n: e for n, e in events.items() if e.mode == "reset"}
        self.interval_events = {n: e for n, e in events.items() if e.mode == "interval"}
        self.max_latency_steps = max((e.max_latency_steps for e in self.reset_events.values()), default=0)
        self.params = torch.zeros(self.num_envs, len(self.param_names), device=dev)
        self._variant_tables = {n: e.sample_variants() for n, e in self.startup_events.items()}
        self.commands = {}
        for name, t in cfg.commands.items():
            make = bind(COMMANDS, "command", "commands", name, t)
            try:
                self.commands[name] = make(self, **t.params)
            except ConfigError:
                raise
            except ValueError as e:  # a parameter's value the term refuses
                raise ConfigError(f"task.commands.{name}.params.{e}") from None
            if self.commands[name].max_rate is not None:  # the robot's side rate-limits it alike
                rate = tuple(float(r) for r in self.commands[name].max_rate)
                extra = dataclasses.replace(self.spec.extra, command_max_rate=rate)
                self.spec = dataclasses.replace(self.spec, extra=extra)
        levels = self.curriculum_levels + tuple(c.level for c in self.commands.values() if c.level)
        self.curricula = {
            name: bind(CURRICULA, "curriculum", "curricula", name, t)(self, **t.params)
            for name, t in cfg.curricula.items()
        }
        for name in self.curricula:
            if name not in levels:
                raise ConfigError(
                    f"task.curricula.{name}: this task has no level '{name}' to move "
                    f"(levels: {', '.join(levels) or 'none'})"
                )

    def operator_readings(self) -> dict[str, torch.Tensor]:
        """The commands, as the readings the policy observes them by (`command`, `target_pos_w`)."""
        return {c.reading: c.value for c in self.commands.values()}

    def level(self, name: str) -> float:
        """Curriculum level `name` (1: the full ranges, as without a curriculum)."""
        c = self.curricula.get(name)
        return 1.0 if c is None else c.level

    # --- what a task supplies ------------------------------------------------------------------
    @abstractmethod
    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        """The task's own initial state for `env_ids` (the events have drawn their parameters by then)."""

    @abstractmethod
    def _apply_command(self, command: torch.Tensor) -> None:
        """Send a (latency-delayed) command in spec units to the physics and step it."""

    @abstractmethod
    def _noise_std_by_term(self) -> dict[str, float]:
        """{observation term: standard deviation of its zero-mean sensor noise}, for the terms the robot
        senses (the others, e.g. an operator's command, come in exact); their true values also go to
        the critic."""

    def sensor_noise(self, std: torch.Tensor) -> torch.Tensor:
        """`(num_envs, k)` zero-mean noise with standard deviation `std` `(k,)`, of the distribution the
        task's `noise.distribution` names: uniform (as legged_gym and mjlab add it, cheaper to draw)
        or Gaussian."""
        shape = (self.num_envs, std.shape[-1])
        if self._gaussian_noise:
            return torch.randn(shape, generator=self.generator, device=self.device) * std
        u = torch.rand(shape, generator=self.generator, device=self.device)
        return (u - 0.5) * (std * 12**0.5)

    def bias_columns(self, term: str) -> slice:
        """The columns of `sensor_bias` that offset observation term `term` (a per-episode sensor bias)."""
        if term not in self._noisy_cols:
            raise ConfigError(
                f"sensor bias on '{term}', which has no sensor noise (noisy terms: {', '.join(self._noisy_cols)})"
            )
        return self._noisy_cols[term]

    def param(self, name: str, default: float = 1.0) -> torch.Tensor:
        """`(num_envs,)` the randomized parameter `name`, or `default` where no event draws it."""
        if name in self.param_names:
            return self.params[:, self.param_names.index(name)]
        return torch.full((self.num_envs,), default, device=self.device)

    def _signals(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(true `(num_envs, k)`: the sensed terms without noise or bias, for the critic; the signal of
        every term, keyed by PolicySpec term name, as the robot senses it). Sensor noise and bias are
        added to each term's signal in the frame it is reported in."""
        terms = {name: fn(self.readings, self._default_joint_pos) for name, fn in self._term_fns}
        true = torch.cat([terms[n] for n in self._noisy_terms], dim=-1)
        sensed = true + self.sensor_noise(self._noise_std) + self.sensor_bias
        for n, cols in self._noisy_cols.items():
            terms[n] = sensed[:, cols]
        terms["last_action"] = self.action
        return true, terms

    def _physics_ok(self) -> torch.Tensor:
        """`(num_envs,)` False where the simulation state went NaN/inf."""
        return torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    def _task_state(self) -> dict[str, torch.Tensor]:
        """Task-specific tensors to save with the env (actuator states, curriculum)."""
        return {}

    def _load_task_state(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027 a hook: most tasks keep no state
        """Restore what `_task_state` saved."""

    def _step_metrics(self) -> dict[str, torch.Tensor]:
        """`(num_envs,)` task measures for evaluation, taken after each step before any reset."""
        return {}

    def _after_iteration(self, episode_stats: dict) -> dict[str, float]:
        """Called by the runner once per training iteration with the means over the episodes that ended
        in it; moves the curricula, returns their levels to log."""
        if episode_stats.get("count"):
            for c in self.curricula.values():
                c.update(episode_stats)
        return {f"curriculum/{name}": c.level for name, c in self.curricula.items()}

    # --- the shared loop -----------------------------------------------------------------------
    def reset(self, spread_episodes: bool = False) -> dict[str, torch.Tensor]:
        """`spread_episodes`: start each env at a random step of its first episode, so that episodes end
        (and commands and pushes come) spread over time rather than all at once, every episode length,
        as legged_gym and rsl_rl's `init_at_random_ep_len` do: each iteration then sees falls and time
        limits in their true shares, which is what the curricula decide on. The episode stats count the
        steps each episode really ran."""
        self._reset(self.env_ids)
        if spread_episodes:
            self.episode_step.random_(self.max_episode_steps, generator=self.generator)
            self.episode_start_step.copy_(self.episode_step)
        self._check_terms()
        return self._observations()

    def _check_terms(self) -> None:
        """Evaluate every reward, termination and critic term once, on the first readings: a term that
        needs a reading this robot does not have (a base position on a fixed arm) fails here, named,
        before anything runs."""
        critic = ((fn.__name__, functools.partial(fn, self)) for fn in self.critic_terms)
        for group, terms in (
            ("rewards", self.reward_terms.items()),
            ("terminations", self.termination_terms.items()),
            ("critic", critic),
        ):
            for name, term in terms:
                try:
                    term()
                except (KeyError, AttributeError) as e:
                    what = repr(e.args[0] if isinstance(e, KeyError) else e.name)
                    raise ConfigError(
                        f"task.{group}.{name}: needs {what}, "
                        f"which robot '{self.spec.robot}' in this task does not have "
                        f"(readings: {', '.join(sorted(self.readings))})"
                    ) from None

    def step(self, action: torch.Tensor):
        self.prev_action = self.action
        self.action = action.detach().clone()
        return self.step_command(cast(torch.Tensor, self.action_mapper(self.action)))

    def step_command(self, command: torch.Tensor):
        """One control period from an actuator command `(num_envs, action_dim)` in spec units (what a
        robot's driver takes), through the latency queue; `step` without the policy's action mapping,
        for a simulated robot driven by a deploy controller."""
        queue = self._command_queue
        queue[:, 1:] = queue[:, :-1].clone()
        queue[:, 0] = command
        self._apply_command(queue[self.env_ids, self.latency_steps])
        for c in self.commands.values():
            c.advance()
            n = c.resample_steps
            ids = (self.episode_step % n == n - 1).nonzero().squeeze(-1) if n else ()
            if len(ids):
                c.resample(ids)
        for event in self.interval_events.values():
            ids = (self.episode_step % event.interval_steps == event.interval_steps - 1).nonzero().squeeze(-1)
            if ids.numel():
                event.fire(ids)
        self.episode_step += 1

        ok = self._physics_ok()
        reasons = {name: term() for name, term in self.termination_terms.items()}
        reasons["nan"] = ~ok
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        for mask in reasons.values():
            terminated |= mask
        truncated = (self.episode_step >= self.max_episode_steps) & ~terminated
        self.terminated = terminated

        terms = torch.stack([term() for term in self.reward_terms.values()], dim=-1) * self._reward_scale
        terms = torch.where(ok[:, None], terms, torch.zeros_like(terms))  # a diverged step earns nothing
        self._episode_sums += terms
        reward = terms.sum(-1)

        extras: dict[str, Any] = {"metrics": self._step_metrics()} if self.record_metrics else {}
        done_ids = (terminated | truncated).nonzero().squeeze(-1)
        if self.record_metrics:
            extras["reasons"] = reasons
        final_obs = self._final_observations() if self.keep_final_obs and bool(truncated.any()) else None
        if done_ids.numel():
            extras["episode"] = self._episode_stats(done_ids, reasons, truncated)
            self.nan_resets += int(reasons["nan"].sum())
            self._reset(done_ids)
        obs = self._observations()
        if final_obs is not None:
            # the observation each env's action led to: before the reset where the time limit cut an episode
            extras["final_obs"] = {k: torch.where(truncated[:, None], final_obs[k], v) for k, v in obs.items()}
        return obs, reward, terminated, truncated, extras

    def _final_observations(self) -> dict[str, torch.Tensor]:
        """The observations of the current state, leaving the policy's history as it was (the step's own
        observations, after the resets, advance it)."""
        history = {k: v.clone() for k, v in self.policy_obs.state_dict().items()}
        obs = self._observations()
        self.policy_obs.load_state_dict(history)
        return obs

    def _reset(self, env_ids: torch.Tensor) -> None:
        self._randomize(env_ids)
        self._reset_envs(env_ids)
        for command in self.commands.values():
            command.resample(env_ids, at_reset=True)
        self.episode_step[env_ids] = 0
        self.episode_start_step[env_ids] = 0
        self.action[env_ids] = 0.0
        self.prev_action[env_ids] = 0.0
        self._command_queue[env_ids] = cast(torch.Tensor, self.action_mapper(self.action[env_ids]))[:, None]
        self.policy_obs.reset(env_ids)
        self._episode_sums[env_ids] = 0.0

    def _randomize(self, env_ids: torch.Tensor) -> None:
        """New values of the randomized parameters for `env_ids`: a model variant (the startup events'
        values), then each reset event's draw, applied in the config's order."""
        if self.startup_events:
            variant = torch.randint(
                len(self.backend.variants), (len(env_ids),), generator=self.generator, device=self.device
            )
            self.backend.set_env_variant(env_ids, variant)
            for name, table in self._variant_tables.items():
                self.params[env_ids, self._event_cols[name]] = table[variant]
        for name, event in self.reset_events.items():
            values = event.sample(len(env_ids))
            self.params[env_ids, self._event_cols[name]] = values
            event.apply(env_ids, values)

    def apply_params(self, env_ids: torch.Tensor) -> None:
        """Put the reset events' values in `params` into the env again (restoring a saved env, pinning
        a reality gap)."""
        for name, event in self.reset_events.items():
            event.apply(env_ids, self.params[env_ids, self._event_cols[name]])

    def _privileged(self) -> torch.Tensor:
        """`(num_envs, k)` the critic's privileged terms (`cfg.critic`), then every randomized parameter."""
        return torch.cat([fn(self) for fn in self.critic_terms] + [self.params], dim=-1)

    def _observations(self) -> dict[str, torch.Tensor]:
        true, sensed = self._signals()
        policy = cast(torch.Tensor, self.policy_obs(sensed))  # the builder's arrays are torch (`like`)
        # The critic sees what the actor sees, the same quantities without noise, and privileged state.
        return {"policy": policy, "critic": torch.cat((policy, true, self._privileged()), dim=-1)}

    def _episode_stats(self, done_ids, reasons, truncated) -> dict[str, float]:
        """Means over the episodes that just ended, and their count."""
        names = [f"reward/{n}" for n in self.reward_terms] + [f"end/{n}" for n in reasons]
        names += ["end/timeout", "length_s"]
        columns = [m.float() for m in reasons.values()]
        steps_run = self.episode_step - self.episode_start_step
        columns += [truncated.float(), steps_run.float() / self.spec.control_hz]
        means = torch.cat((self._episode_sums, torch.stack(columns, dim=-1)), dim=-1)[done_ids].mean(0).tolist()
        return dict(zip(names, means, strict=True), count=int(done_ids.numel()))

    # --- save and restore, so a resumed run continues exactly --------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            "action": self.action,
            "prev_action": self.prev_action,
            "latency_steps": self.latency_steps,
            "command_queue": self._command_queue,
            "params": self.params,
            "episode_step": self.episode_step,
            "episode_start_step": self.episode_start_step,
            "nan_resets": torch.tensor(self.nan_resets),
            "generator": self.generator.get_state(),
            "episode_sums": self._episode_sums,
            **{f"curriculum/{n}/{k}": v for n, c in self.curricula.items() for k, v in c.state_dict().items()},
            **{f"command/{n}/value": c.value for n, c in self.commands.items()},
            **{f"command/{n}/target": c.target for n, c in self.commands.items()},
            **{f"command/{n}/steps_since": c.steps_since for n, c in self.commands.items()},
            **{f"policy_obs/{k}": v for k, v in self.policy_obs.state_dict().items()},
            **{f"backend/{k}": v for k, v in self.backend.state_dict().items()},
            **{f"task/{k}": v for k, v in self._task_state().items()},
        }
        return {k: v.clone() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("action", "prev_action", "latency_steps", "params", "episode_step"):
            getattr(self, name).copy_(state[name])
        # checkpoints from before spread episodes: every episode began at step 0
        self.episode_start_step.copy_(state.get("episode_start_step", torch.zeros_like(self.episode_start_step)))
        self._command_queue.copy_(state["command_queue"])
        self.nan_resets = int(state["nan_resets"])
        self.generator.set_state(state["generator"])
        self._episode_sums.copy_(state["episode_sums"])
        self.policy_obs.load_state_dict(_under(state, "policy_obs/"))
        self.backend.load_state_dict(_under(state, "backend/"))
        self.load_curricula(state)
        for name, c in self.commands.items():
            c.value.copy_(state[f"command/{name}/value"])
            c.target.copy_(state.get(f"command/{name}/target", c.value))  # older checkpoints: no ramp under way
            c.steps_since.copy_(state[f"command/{name}/steps_since"])
        self.apply_params(self.env_ids)
        self._load_task_state(_under(state, "task/"))

    def load_curricula(self, state: dict[str, torch.Tensor]) -> None:
        """The curricula's levels and windows from a `state_dict` (also of another number of envs)."""
        for name, c in self.curricula.items():
            c.load_state_dict(_under(state, f"curriculum/{name}/"))

    @property
    def obs_dims(self) -> dict[str, int]:
        true, _ = self._signals()
        return {
            "policy": self.spec.obs_dim,
            "critic": self.spec.obs_dim + true.shape[-1] + self._privileged().shape[-1],
        }

    def mirror(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The left-right mirror of the policy, critic and action columns (sim.symmetry), for symmetry
        augmentation; ConfigError, naming what is missing, where the robot has no mirror or a column no rule."""
        robot = self.robot.cfg
        if robot.mirror is None:
            raise ConfigError(
                f"train.ppo.symmetry: robot '{robot.name}' has no `mirror` in its config "
                "(the joint and foot pairs that trade places, and the joints that change sign); "
                "give it one, or train without: --ppo.no-symmetry"
            )
        feet = robot.feet.names if robot.feet else ()
        maps = mirror_maps(self.spec, self._noisy_terms, self.cfg.critic, self.param_names, feet, robot.mirror)
        for group, dim in self.obs_dims.items():
            assert len(maps[group][0]) == dim, f"the {group}'s mirror has {len(maps[group][0])} columns for {dim}"
        return {k: (index.to(self.device), sign.to(self.device)) for k, (index, sign) in maps.items()}

    def close(self) -> None:  # noqa: B027 a hook: only backends with threads or devices hold anything
        """Release what the env holds."""


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix`, without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
