"""The `s2r` command: train, export, eval, replay, bench, tasks, robots, hil, hw."""

from __future__ import annotations

import os

# Torch's OpenMP workers would otherwise spin after each op and steal the cores MuJoCo's threads need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _known_errors():
    from config.validate import ConfigError
    from deploy.onnx_policy import PolicyLoadError
    from deploy.spec import SpecError
    from policies.checkpoint import CheckpointError
    from policies.distributed import RankError
    from policies.export import ExportError
    from replay.bag import BagError
    from replay.candidates import ReplayError
    from replay.mapping import MappingError
    from sim.backends.mujoco_cpu import ModelError
    from sim.robots import UnknownRobotError
    from sim.tasks import UnknownTaskError
    from sim.video import VideoError

    return (
        ConfigError,
        UnknownTaskError,
        UnknownRobotError,
        CheckpointError,
        PolicyLoadError,
        SpecError,
        ModelError,
        ExportError,
        VideoError,
        BagError,
        ReplayError,
        MappingError,
        RankError,
    )


def _tyro_cli(cfg, args: list[str], prefix: str = ""):
    """`cfg` with the overrides in `args` (`--FIELD... VALUE`, or `--PREFIX.FIELD... VALUE`), typed by tyro."""
    import dataclasses

    import tyro

    if not prefix:
        return tyro.cli(type(cfg), default=cfg, args=args, use_underscores=True, prog="s2r train")
    wrapper = dataclasses.make_dataclass("Args", [(prefix, type(cfg), dataclasses.field(default=cfg))])
    return getattr(tyro.cli(wrapper, default=wrapper(), args=args, use_underscores=True, prog="s2r train"), prefix)


def _apply_overrides(train_cfg, task_cfg, tokens: list[str]):
    """The configs with the command line's field overrides, typed by tyro: `--task.FIELD... VALUE` for
    the task config (e.g. `--task.rewards.tilt.weight -0.2`, `--task.events.mass.params.scale 0.8 1.2`),
    `--FIELD... VALUE` for the training config (e.g. `--num-envs 64`, `--ppo.num_steps 32`). A bad
    field or value exits 2 with tyro's message naming it and the fields it could have meant."""
    from config.validate import ConfigError

    groups: dict[str, list[str]] = {"train": [], "task": []}
    group = None
    for tok in tokens:
        if tok.startswith("--"):
            group = "task" if tok.startswith("--task.") else "train"
        elif group is None:
            raise ConfigError(
                f"unexpected argument '{tok}' (a config override is --FIELD VALUE, e.g. --task.episode_s 10)"
            )
        groups[group].append(tok)
    if groups["train"]:
        train_cfg = _tyro_cli(train_cfg, groups["train"])
    if groups["task"]:
        task_cfg = _tyro_cli(task_cfg, groups["task"], prefix="task")
    return train_cfg, task_cfg


def _print_fields(train_cfg, task_cfg) -> None:
    """Every config field `s2r train` takes as an override, with its type, default and doc (tyro's help)."""
    for cfg, prefix in ((train_cfg, ""), (task_cfg, "task")):
        try:
            _tyro_cli(cfg, ["--help"], prefix)
        except SystemExit:
            pass


def _find_checkpoint(path: Path) -> Path:
    from policies.checkpoint import CheckpointError

    if path.is_dir():
        path = path / "model_last.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def _print_export_warning(onnx_path: Path) -> None:
    """The warning export recorded in the policy's metadata (a partial or superseded policy), on stderr."""
    from deploy.onnx_policy import read_metadata
    from policies.export import WARNING_KEY

    warning = read_metadata(onnx_path).get(WARNING_KEY)
    if warning:
        print(f"s2r: warning: {onnx_path}: {warning}", file=sys.stderr)


def cmd_train(args) -> None:
    from config import validate as C
    from policies import distributed
    from policies.checkpoint import load_checkpoint
    from policies.export import export_checkpoint
    from policies.runner import Runner, TrainCfg, default_train_cfg
    from sim.tasks import default_cfg, task_entry

    ckpt_path = None
    if args.resume:
        ckpt_path = _find_checkpoint(Path(args.resume))
        saved = json.loads(load_checkpoint(ckpt_path)["config"])
        train_cfg = C.from_dict(TrainCfg, saved["train"])
        task_cfg = C.from_dict(task_entry(train_cfg.task)[0], saved["task"])
        run_dir = Path(args.run_dir) if args.run_dir else ckpt_path.parent
    else:
        train_cfg = default_train_cfg(args.task)
        task_cfg = default_cfg(args.task, args.robot)
        run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / args.task / time.strftime("%Y%m%d-%H%M%S")
    if args.fields:
        _print_fields(train_cfg, task_cfg)
        return
    train_cfg, task_cfg = _apply_overrides(train_cfg, task_cfg, args.overrides)
    C.validate(train_cfg)
    C.validate(task_cfg, prefix="task.")

    ranks = distributed.start(train_cfg.dist, train_cfg.device, args.distributed)
    runner = Runner(train_cfg, task_cfg, run_dir, resume=ckpt_path, ranks=ranks)
    if ranks.is_main:
        on = train_cfg.device if ranks.world_size == 1 else f"each of {ranks.world_size} ranks ({train_cfg.device})"
        print(f"training {train_cfg.task}: {train_cfg.num_envs} envs on {on}, run dir {run_dir}")
    t0 = time.perf_counter()
    ckpt = runner.learn(progress=not args.no_progress)
    train_s = time.perf_counter() - t0
    ranks.close()
    runner.env.close()
    if not ranks.is_main:  # rank 0 alone reports and exports
        return
    print(f"trained {runner.iteration} iterations, {runner.env_steps} env steps in {train_s:.1f} s")
    print(f"  checkpoint     {ckpt}")
    print(f"  metrics        {run_dir / 'metrics.csv'}  (TensorBoard: {run_dir / 'tensorboard'})")
    print(f"  learning curve {run_dir / 'learning_curve.png'}")
    if not args.no_export:
        onnx_path, report = export_checkpoint(ckpt)
        print(f"  policy         {onnx_path}  (+ {onnx_path.with_suffix('.json').name}); parity {report}")
        _print_export_warning(onnx_path)


def cmd_export(args) -> None:
    from policies.export import export_checkpoint

    onnx_path, report = export_checkpoint(_find_checkpoint(Path(args.checkpoint)), args.out)
    print(f"exported {onnx_path} and {onnx_path.with_suffix('.json')}")
    for k, v in report.items():
        print(f"  {k}: {v:.3g}")
    _print_export_warning(onnx_path)


def cmd_eval(args) -> None:
    from config.validate import ConfigError
    from deploy.onnx_policy import PolicyLoadError
    from sim.evaluate import evaluate, write_eval

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    path = Path(args.policy)
    if path.is_dir():
        path = path / "policy.onnx"
    if not path.is_file():
        raise PolicyLoadError(f"no exported policy at {path} (run `s2r export RUN_DIR` first)")
    result = evaluate(path, episodes=args.episodes, seed=args.seed, backend=args.backend)
    out = Path(args.out) if args.out else path.parent / "eval.json"
    write_eval(result, out)
    print(f"{result['task']}: {result['episodes']} episodes under domain randomization, policy {path}")
    for k, v in result.items():
        if isinstance(v, float) and k not in ("eval_wall_s",):
            print(f"  {k:26s} {v:.4f}")
    print(f"  definition: {result['success_definition']}")
    print(f"wrote {out}")
    if args.video:
        from sim.video import record_video

        video = record_video(path, args.video, seconds=args.video_seconds, seed=args.seed)
        print(f"wrote {video['video']} ({video['frames']} frames, {video['fps']:.0f} fps)")


def cmd_bench(args) -> None:
    from sim.bench import bench_sim

    r = bench_sim(
        args.task, args.num_envs, steps=args.steps, repeats=args.repeats, robot=args.robot, backend=args.backend
    )
    warp = r["backend"] == "warp"
    where = f"MuJoCo Warp on {r['device']}" if warp else f"{r['threads']} MuJoCo threads"
    print(
        f"s2r bench sim --task {r['task']} --robot {r['robot']} --num-envs {r['num_envs']} --backend {r['backend']}  "
        f"({where})"
    )
    print(
        f"  training env             {r['env_steps_per_s']:12,.0f} env steps/s "
        f"({r['env_physics_steps_per_s']:,.0f} physics steps/s)"
    )
    if warp:
        print(
            f"  raw mjw.step ceiling     {r['mj_step_ceiling_per_s']:12,.0f} physics steps/s "
            "(MuJoCo Warp's step on the env's worlds, one CUDA graph on a GPU, no task code)"
        )
    else:
        print(
            f"  raw mj_step ceiling      {r['mj_step_ceiling_per_s']:12,.0f} physics steps/s "
            "(mujoco.rollout: the env's worlds, threads, no task code)"
        )
    print(
        f"  ratio env / ceiling      {r['ratio']:12.2f}  (median of {args.repeats} alternate timings; "
        f"range {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})"
    )
    if not warp:
        print(
            f"  python thread pool       {r['python_thread_pool_mj_step_per_s']:12,.0f} physics steps/s "
            "(mj_step per env per call; not used)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


# `s2r bench train`'s options of one mode only, None unless given: --nproc selects the ranks mode
RANKS_OPTIONS = ("iterations", "repeats")
LEARNERS_OPTIONS = ("algos", "time_budget_s", "eval_every", "episodes", "seed", "backend", "run_dir")


def cmd_bench_train(args) -> None:
    from config.validate import ConfigError
    from policies.bench import bench_train

    ranks = args.nproc is not None
    wrong = [
        f"--{k.replace('_', '-')}" for k in (LEARNERS_OPTIONS if ranks else RANKS_OPTIONS) if vars(args)[k] is not None
    ]
    if wrong:
        mode = "with --nproc (ranks)" if ranks else "without --nproc (learners)"
        raise ConfigError(f"{', '.join(wrong)}: not an option of s2r bench train {mode}")
    if not ranks:
        return _bench_learners(args)
    given = {k: vars(args)[k] for k in ("num_envs", *RANKS_OPTIONS) if vars(args)[k] is not None}
    r = bench_train(args.task, nproc=args.nproc, device=args.device, **given)
    print(
        f"s2r bench train --task {r['task']} --num-envs {r['num_envs_per_rank']} --nproc {r['nproc']} "
        f"--device {r['device']}  "
        f"({r['num_envs_per_rank']} envs per rank, {r['iterations']} iterations, {r['repeats']} alternate pairs)"
    )
    for k, rates in r["samples_per_s"].items():
        label = "1 rank (s2r train)" if k == "1" else f"{k} ranks (torchrun)"
        print(f"  {label:26s} {statistics.median(rates):12,.0f} samples/s (env steps of all ranks)")
    print(
        f"  ratio {r['nproc']} ranks / 1 rank    {r['ratio']:12.2f}  (median of {r['repeats']}; "
        f"range {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


def _bench_learners(args) -> None:
    """`s2r bench train` without --nproc: each learner's training time to the task's success bar."""
    from policies.bench import LearnersBenchCfg, bench_learners

    given = {k: vars(args)[k] for k in ("task", "num_envs", "device", *LEARNERS_OPTIONS) if vars(args)[k] is not None}
    r = bench_learners(LearnersBenchCfg(**{**given, "algos": tuple(given.get("algos", LearnersBenchCfg.algos))}))
    before, after = r["ceiling_before"], r["ceiling_after"]
    print(
        f"s2r bench train --task {r['task']} --algos {' '.join(r['algos'])} --time-budget-s {r['time_budget_s']:g} "
        f"--num-envs {r['num_envs']} --episodes {r['episodes']} --seed {r['seed']} --device {r['device']} "
        f"--backend {after['backend']}"
    )
    ceiling = r["goal_ceiling_per_s"]
    goal = f"{r['goal_s']:g} s" + (f" at a {ceiling:,.0f} physics steps/s ceiling" if ceiling else "")
    print(f"  bar: {r['bar']} on {r['episodes']} episodes (s2r eval); issue 17's goal: within {goal}")
    print(
        f"  MuJoCo ceiling (s2r bench sim, {before['num_envs']} envs, {before['backend']}): "
        f"{before['mj_step_ceiling_per_s']:,.0f} physics steps/s before the runs, "
        f"{after['mj_step_ceiling_per_s']:,.0f} after"
    )
    scaled = r["scale_to_goal_ceiling"] is not None
    at_goal = f"at {ceiling / 1000:,.0f} k ceiling" if scaled else ""
    print(f"  {'learner':8s} {'time to bar':22s} {at_goal:18s} {'iteration':>9s} {'env steps':>11s}  figures")
    for algo, x in r["learners"].items():
        at = x["at"]
        figures = " ".join(f"{b} {at[b]:.3f}" for b in r["bar_metrics"])
        if x["met"]:
            when = f"{at['time_s']:.1f} s"
            scaled_s = "{:.1f}-{:.1f} s".format(*sorted(x["time_s_at_goal_ceiling"])) if scaled else ""
        else:
            when, scaled_s = f"not within {r['time_budget_s']:g} s", "-" if scaled else ""
            figures = f"best: {figures} at {at['time_s']:.1f} s"
        print(f"  {algo:8s} {when:22s} {scaled_s:18s} {at['iteration']:9d} {at['env_steps']:11,d}  {figures}")
    for algo, x in r["learners"].items():
        print(
            f"  {algo}: trained {x['trained_iterations']} iterations, {x['trained_env_steps']:,} env steps in "
            f"{x['trained_s']:.1f} s ({x['run_wall_s']:.1f} s with start-up); checkpoints every "
            f"{r['eval_every'][algo]} iterations, {len(x['evaluated'])} evaluated in {x['eval_wall_s']:.1f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


def cmd_bench_deploy(args) -> None:
    from deploy.bench import bench_inference, bench_loop, cpu_burners
    from deploy.realtime import freeze_gc, set_process_realtime

    ros_pkg = Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "s2r_ros"
    sys.path.insert(0, str(ros_pkg))
    from s2r_ros.processes import CONFIG, SHIPPED_POLICIES

    try:
        from s2r_ros.bench_latency import bench_dds_latency
    except ImportError as e:
        bench_dds_latency, no_dds = None, f"skipped, no ROS 2 Python client here ({e})"
    if args.load < 0:
        raise SystemExit(f"--load {args.load}: the number of CPU burners must be >= 0")
    policy_dir = Path(args.policy_dir) if args.policy_dir else SHIPPED_POLICIES
    robots = ("quadrotor", "quadruped", "arm")
    # as on the robot: the bench's loop (and the driver it plays) real-time, start-up out of the collector's reach
    why_not = set_process_realtime(args.realtime_priority) if args.realtime_priority > 0 else "off"
    freeze_gc()
    realtime = f"SCHED_FIFO {args.realtime_priority}" if not why_not else why_not
    conditions = {"quiet": 0, **({f"load {args.load}": args.load} if args.load else {})}
    out: dict = {"realtime": realtime, "cpus": os.cpu_count(), "inference": {}, "loop": {}, "dds": {}}
    print(f"s2r bench deploy  (real-time: {realtime}; {os.cpu_count()} CPUs)")
    print("  ONNX inference, one observation, one thread        p50      p99      max   (target p99 <= 100 us)")
    for robot in robots:
        r = out["inference"][robot] = bench_inference(policy_dir / f"{robot}.onnx")
        print(
            f"    {robot:10s} obs {r['obs_dim']:3d}                          "
            f"{r['p50_us']:6.1f}   {r['p99_us']:6.1f}   {r['max_us']:6.1f} us"
        )
    for condition, burners in conditions.items():
        with cpu_burners(burners):
            out["loop"][condition] = {
                f"{hz:g}": bench_loop(hz, args.seconds, policy_dir / "quadruped.onnx", CONFIG / "quadruped.yaml")
                for hz in (50.0, 500.0)
            }
            if bench_dds_latency is not None:
                out["dds"][condition] = bench_dds_latency(
                    policy_dir / "arm.onnx", "arm", args.seconds, args.realtime_priority
                )
    names = list(conditions)

    def row(label: str, cells: list[str]) -> None:
        print(f"    {label:44s}" + "".join(f"{c:>26s}" for c in cells))

    row("", names)
    print("  control loop, full Controller step (quadruped)            (target: jitter p99 <= 1000 us)")
    for hz in ("50", "500"):
        loops = [out["loop"][c][hz] for c in names]
        row(
            f"{hz} Hz: jitter p50 / p99 / max, us",
            [f"{r['jitter_p50_us']:.0f} / {r['jitter_p99_us']:.0f} / {r['jitter_max_us']:.0f}" for r in loops],
        )
        row(f"{hz} Hz: overruns / loops", [f"{r['overruns']} / {r['loops']}" for r in loops])
        row(
            f"{hz} Hz: GC runs, longest pause, us",
            [f"{r['gc_collections']}, {r['gc_max_pause_us']:.0f}" for r in loops],
        )
    if bench_dds_latency is None:
        print(f"  DDS latency: {no_dds}")
    else:
        dds = [out["dds"][c] for c in names]
        print("  JointState in -> command out, policy_node process, Fast DDS loopback (target: p99 <= 3000 us)")
        row(
            "until policy_node published it: p50 / p99, us",
            [f"{r['to_command_published_p50_us']:.0f} / {r['to_command_published_p99_us']:.0f}" for r in dds],
        )
        row(
            "until received back: p50 / p99 / max, us",
            [f"{r['p50_us']:.0f} / {r['p99_us']:.0f} / {r['max_us']:.0f}" for r in dds],
        )
        row("messages / lost", [f"{r['messages']} / {r['lost']}" for r in dds])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def cmd_replay(args) -> None:
    from replay.candidates import ReplayError
    from replay.evaluate import replay_bag

    log, out = Path(args.log), Path(args.out)
    if any(k < 1 for k in args.k):
        raise ReplayError(f"--k values must be >= 1, got {args.k}")
    if log.suffix == ".csv" or args.mapping:  # a foreign log: a CSV file or another stack's bag
        if not args.mapping or not (args.policy or args.fit):
            raise ReplayError(
                f"{log} is a foreign log: give --mapping NAME_OR_YAML, and --policy A.onnx to score policies on it "
                "and/or --fit OTHER_LOG to fit the quadrotor model on another flight"
            )
        from replay.foreign import check_scoring, score_foreign_log

        window = tuple(args.window) if args.window else None
        if args.policy and args.fit:  # checked before the fit, which takes a while
            check_scoring(args.mapping, args.policy, window)
        sysid = _print_sysid(args.fit, log, args.mapping, out) if args.fit else None
        if args.policy:  # after the fit: one metrics.json and report.html with both
            m = score_foreign_log(log, args.mapping, args.policy, out, args.episodes, window, sysid=sysid)
            print(
                f"{m['task']}: {m['rows']} control steps ({m['logged_s']:.1f} s, {m['starts']} start(s)) "
                "rebuilt from the "
                f"log's readings {sorted(m['readings'].values())}"
                + (f"; log cut short: {m['recovery_notes']}" if m["recovery_notes"] else "")
            )
            _print_ranking(m)
        print(f"wrote {out / 'report.html'} and {out / 'metrics.json'}")
        return
    if args.fit:
        raise ReplayError(
            "--fit applies to foreign logs read through --mapping; a bag of this stack carries its PolicySpec"
        )
    m = replay_bag(log, args.policy, out, tuple(args.k), dynamics=not args.no_dynamics_gap, sim_episodes=args.episodes)
    print(
        f"{m['task']}: {m['rows']} control steps, {m['logged_s']:.1f} s logged; policy_io pass "
        f"{m['throughput_x_realtime']:.0f}x real time"
        + ("" if m["complete"] else f"; bag cut short: {m['recovery_notes']}")
    )
    for name, a in m["action_agreement"].items():
        flew = " (the policy that flew)" if m["candidates"][name]["flew"] else ""
        print(f"  {name:20s} action agreement max |diff| {a['max_abs_diff']:.3g}, mean {a['mean_abs_diff']:.3g}{flew}")
    if "dynamics_gap" in m:
        g = m["dynamics_gap"]
        for k, d in g["k"].items():
            print(
                f"  dynamics gap k={k:>3}: "
                + ", ".join(f"{q} {v['norm']['mean']:.4g}" for q, v in d.items() if q != "horizon_s")
            )
        print(f"  dynamics-gap pass: {g['cost_s_per_logged_s']:.3f} s per logged second ({g['windows']} windows)")
    _print_ranking(m)
    print(f"wrote {out / 'report.html'} and {out / 'metrics.json'}")


def _print_ranking(m: dict) -> None:
    """Shift per candidate (its worst terms), the ranking and the task metrics of a replay."""
    for name, sh in m["shift"].items():
        worst = sorted(sh["terms"].items(), key=lambda kv: -kv[1]["rms_z"])[:3]
        print(
            f"  {name:20s} shift {sh['score']:.3f} (RMS z; worst terms "
            + ", ".join(f"{t} {v['rms_z']:.2f}" for t, v in worst)
            + ")"
        )
    for r in m.get("ranking", {}).get("order", []):
        print(f"  rank {r['policy']:20s} score {r['score']:.4f} (sim {r['sim_score']:.4f}, shift {r['shift']:.3f})")
    print("  task metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in m["task_metrics"].items() if isinstance(v, float)))


def _print_sysid(fit, log, mapping, out: Path) -> dict:
    """Fit the quadrotor model on flight `fit`, report its gap on `log`; returns metrics.json's "sysid"."""
    from replay.sysid import crazyflie_report

    metrics = crazyflie_report(fit, log, mapping, out)
    for flight, notes in metrics["recovery_notes"].items():
        for note in notes:
            print(f"{flight} flight cut short: {note}")
    print(f"fitted the quadrotor model on {fit}; dynamics gap on {log} (mean error norm, stock -> fitted):")
    for k, d in metrics["heldout"]["stock"]["k"].items():
        f = metrics["heldout"]["fitted"]["k"][k]
        print(
            f"  k={k:>3}  position {d['pos_m']['norm']['mean']:.4f} -> {f['pos_m']['norm']['mean']:.4f} m   velocity "
            f"{d['vel_mps']['norm']['mean']:.4f} -> {f['vel_mps']['norm']['mean']:.4f} m/s   attitude "
            f"{d['att_rad']['norm']['mean']:.4f} -> {f['att_rad']['norm']['mean']:.4f} rad"
        )
    print(
        f"wrote {out / 'dynamics_gap.json'}, {out / 'sysid.json'}, {out / 'gap_errors.png'}, "
        f"{out / 'heldout_predictions.png'}"
    )
    return metrics


def cmd_bench_serial(args) -> dict:
    from hardware.bench_serial import bench_serial

    out = bench_serial(tuple(args.bauds), args.seconds)
    print("s2r bench serial (pty emulators in their own processes)")
    print("  link                    baud   round trip p50    p99   rate Hz  wire limit Hz  ratio")
    for link, by_baud in out.items():
        for baud, r in by_baud.items():
            print(
                f"  {link:12s} {int(baud):>12d}   {r['rtt_p50_ms']:8.2f} {r['rtt_p99_ms']:6.2f} ms {r['rate_hz']:8.0f} "
                f"{r['wire_limit_hz']:13.0f}  {r['ratio_to_wire_limit']:5.2f}"
                + (
                    f"  (board asked for {r['configured_rate_hz']} Hz, "
                    f"the emulator's most: {r['ratio_to_configured_rate']:.2f} of it)"
                    if r.get("configured_rate_hz", 0) < int(r["wire_limit_hz"])
                    else ""
                )
            )
    print(
        "  dynamixel: one sync write + one sync read of the arm's 4 servos (half duplex: every byte at 10 bits plus 4 "
        "return delays of 500 us); motor_board: STATE -> COMMAND of the quadruped (full duplex: the longer frame)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def cmd_bench_replay(args) -> None:
    from replay.bench import bench_replay

    r = bench_replay(Path(args.policy) if args.policy else None, args.seconds, args.gap_seconds)
    print(f"s2r bench replay: {r['task']} bag at {r['control_hz']:g} Hz, {r['logged_s']:.0f} s logged, one policy")
    print(
        f"  replay throughput (policy_io pass, no dynamics gap)  {r['throughput_x_realtime']:10.0f} x real time   "
        "(target >= 1000)"
    )
    print(
        f"  dynamics-gap pass (k = 1, 10, 50)                   {r['gap_cost_s_per_logged_s']:10.3f} "
        "s per logged second   "
        f"({r['gap_task']}, {r['gap_logged_s']:.0f} s nominal bag, {r['gap_windows']} windows)"
    )
    print(
        f"  dynamics gap k = 1 on that bag: joint position {r['gap_k1_joint_pos_rad']:.2g} rad, "
        f"base position {r['gap_k1_base_pos_m']:.2g} m"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


def cmd_tasks(args) -> None:
    from sim.tasks import TASKS

    for name in sorted(TASKS):
        entry = TASKS[name]
        print(f"{name:18s} robot kind: {entry.kind:10s} default robot: {entry.cfg().robot:10s} bar: {entry.bar}")
        if args.terms:
            cfg = TASKS[name].cfg()
            for group in ("rewards", "terminations", "events", "commands", "curricula"):
                for term_name, t in getattr(cfg, group).items():
                    weight = f" weight {t.weight:g}" if hasattr(t, "weight") else ""
                    params = ", ".join(f"{k}={v}" for k, v in t.params.items())
                    print(f"  {group:12s} {term_name:16s} {t.func}({params}){weight}")
            print(f"  {'critic':12s} {', '.join(cfg.critic)}, then every randomized parameter")
    if args.terms:
        print(term_catalogue())


def term_catalogue() -> str:
    """Every term function a task config can name, with its parameters, by module (sim/terms/)."""
    import inspect

    from sim.terms.commands import COMMANDS
    from sim.terms.curricula import CURRICULA
    from sim.terms.events import EVENTS
    from sim.terms.observations import CRITIC_TERMS
    from sim.terms.rewards import REWARDS
    from sim.terms.terminations import TERMINATIONS

    lines = ["", "terms (sim/terms/):"]
    for module, registry in (
        ("rewards", REWARDS),
        ("terminations", TERMINATIONS),
        ("events", EVENTS),
        ("commands", COMMANDS),
        ("curricula", CURRICULA),
        ("observations", CRITIC_TERMS),
    ):
        lines.append(f"  {module}.py")
        for name, fn in registry.items():
            params = [str(p) for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "env")]
            mode = f" [{fn.mode}]" if hasattr(fn, "mode") else ""
            lines.append(f"    {name}({', '.join(params)}){mode}")
    return "\n".join(lines)


def cmd_robots(args) -> None:
    from sim.robots import ROBOTS_DIR, find_robot, robot_names

    for name in robot_names():
        r = find_robot(name)
        print(
            f"{name:20s} {r.kind:10s} {len(r.actuator_names):2d} actuators  {r.control_hz:g} Hz  "
            f"{ROBOTS_DIR / (name + '.yaml')}"
        )


def cmd_robot_check(args) -> None:
    from sim.robot_check import check_and_render

    report = check_and_render(args.robot, args.png)
    for line in report:
        print(line)


def cmd_hil(args) -> None:
    from hardware.hil import run_hil

    run_hil(args.robot, args.baud, args.link, args.report_s)


def parse_ids(text: str) -> tuple[int, ...]:
    """ "0-20" or "1,3,11-14" -> the IDs, in order."""
    from config.validate import ConfigError

    ids: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            ids += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise ConfigError(f"--ids: '{text}' is not a list of IDs and ranges such as 0-20 or 1,3,11-14") from None
    if not ids or not all(0 <= i <= 252 for i in ids):
        raise ConfigError(f"--ids: '{text}': IDs are 0..252")
    return tuple(ids)


def cmd_hw_scan(args) -> None:
    import serial

    from config.validate import ConfigError
    from hardware.dynamixel_scan import SCAN_BAUDS, format_scan, scan_link

    ids = parse_ids(args.ids)
    try:
        result = scan_link(args.port, bauds=tuple(args.bauds or SCAN_BAUDS), ids=ids)
    except (OSError, serial.SerialException) as e:
        raise ConfigError(f"--port {args.port}: cannot open it: {e}") from None
    except ValueError as e:  # a baud rate the port cannot be set to
        raise ConfigError(f"--bauds: {e}") from None
    for sentence in format_scan(result).split("; "):
        print(sentence)


def _add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """`--backend`, checked by sim.backends when the env is built (importing it here would slow every command)."""
    parser.add_argument(
        "--backend",
        default="auto",
        help="the physics: cpu (native MuJoCo), warp (MuJoCo Warp), auto (warp where torch sees CUDA, else cpu)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s2r", description="sim-to-real robot control")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a policy headless, then export it to ONNX",
        epilog="Any config field is set by its dotted name: --num-envs N, --max-iterations N, --seed S, "
        "--device cuda:0, --backend cpu|warp|auto (the physics: native MuJoCo, MuJoCo Warp, or warp where CUDA is), "
        "--time-limit-s S (stop after S seconds of training), --ppo.num-steps 32, "
        "--algo ppo|sac|td3 (the learner; SAC's and TD3's settings: --sac.FIELD), "
        "--task.rewards.tilt.weight -0.2, --task.events.mass.params.scale 0.8 1.2. "
        "All of them, typed, with defaults: s2r train --task T --fields",
    )
    t.add_argument("--task", default="quadrotor-hover")
    t.add_argument("--robot", help="built-in robot name (s2r robots) or a robot YAML path; default: the task's own")
    t.add_argument("--run-dir", help="default: runs/TASK/TIMESTAMP")
    t.add_argument("--resume", help="run directory or checkpoint to continue from")
    t.add_argument("--fields", action="store_true", help="list every config field an override can set, then exit")
    t.add_argument("--no-export", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel across the processes torchrun starts: torchrun --nproc_per_node K -m s2r.cli train "
        "--distributed ... (--num-envs is per rank; README: Training on several processes)",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a checkpoint's actor to ONNX with its PolicySpec")
    e.add_argument("checkpoint", help="run directory or checkpoint file")
    e.add_argument("--out", help="default: policy.onnx beside the checkpoint")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("eval", help="evaluate an exported policy in simulation through the deploy code")
    v.add_argument("policy", help="run directory or .onnx file")
    v.add_argument("--episodes", type=int, default=200)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--out", help="default: eval.json beside the policy")
    v.add_argument("--video", help="also render one rollout offscreen to this .mp4 or .gif")
    v.add_argument("--video-seconds", type=float, default=10.0)
    _add_backend_argument(v)
    v.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bs = bsub.add_parser("sim", help="training-env steps/s against the raw physics step ceiling (mj_step or mjw.step)")
    bs.add_argument("--task", default="quadrotor-hover")
    bs.add_argument("--robot", help="built-in robot name or robot YAML path; default: the task's own")
    bs.add_argument("--num-envs", type=int, default=4096)
    bs.add_argument("--steps", type=int, default=100, help="physics steps per env in each timing")
    bs.add_argument("--repeats", type=int, default=7, help="alternate env / ceiling timings")
    bs.add_argument("--json", help="also write the figures to this file")
    _add_backend_argument(bs)
    bs.set_defaults(func=cmd_bench)

    bt = bsub.add_parser(
        "train",
        help="each learner's training time to the task's success bar beside the MuJoCo ceiling; with --nproc K: "
        "training samples/s of 1 rank against K ranks under torchrun",
        epilog="Learners mode (no --nproc): s2r train --algo A --time-limit-s S per learner, then its checkpoints "
        "exported and evaluated in order until one meets the task's bar (s2r tasks lists them); the time to it is "
        "that iteration's training time_s in metrics.csv. Ranks mode: --nproc, --iterations, --repeats.",
    )
    bt.add_argument("--task", default="quadrotor-hover")
    bt.add_argument("--num-envs", type=int, help="learners: default the task's; ranks: per rank, default 512")
    bt.add_argument("--device", default="cpu", help="cuda: a GPU per rank (nccl)")
    bt.add_argument("--algos", nargs="+", help="learners, in order (default: ppo td3 sac)")
    bt.add_argument("--time-budget-s", type=float, help="training seconds per learner (default 300)")
    bt.add_argument(
        "--eval-every",
        type=int,
        help="iterations between evaluated checkpoints (default: ppo 10, td3 and sac 250)",
    )
    bt.add_argument("--episodes", type=int, help="evaluation episodes per checkpoint (default 200)")
    bt.add_argument("--seed", type=int, help="training seed (default 0)")
    bt.add_argument("--run-dir", help="keep each learner's run (checkpoints, metrics.csv) in RUN_DIR/ALGO")
    _add_backend_argument(bt)
    bt.add_argument("--nproc", type=int, help="ranks mode: ranks torchrun starts on this machine, e.g. 2")
    bt.add_argument("--iterations", type=int, help="ranks mode: per run, the first left out of the rate (default 10)")
    bt.add_argument("--repeats", type=int, help="ranks mode: alternate 1-rank / nproc-rank runs (default 3)")
    bt.add_argument("--json", help="also write the figures to this file")
    bt.set_defaults(func=cmd_bench_train, backend=None)

    bd = bsub.add_parser("deploy", help="ONNX inference, control-loop jitter and DDS latency of the robot-side runtime")
    bd.add_argument(
        "--policy-dir", help="folder with quadrotor.onnx, quadruped.onnx, arm.onnx (default: the shipped policies)"
    )
    bd.add_argument("--seconds", type=float, default=10.0, help="per loop-jitter and latency measurement")
    bd.add_argument(
        "--load", type=int, default=0, help="also measure with N CPU-bound processes beside (e.g. 2 per core)"
    )
    bd.add_argument(
        "--realtime-priority", type=int, default=50, help="SCHED_FIFO priority of the bench's loop; 0: ordinary"
    )
    bd.add_argument("--json", help="also write the figures to this file")
    bd.set_defaults(func=cmd_bench_deploy)

    br = bsub.add_parser(
        "replay", help="replay throughput (x real time) on a 50 Hz quadruped bag, and the dynamics-gap cost"
    )
    br.add_argument("--policy", help="quadruped policy.onnx (default: the shipped one)")
    br.add_argument("--seconds", type=float, default=600.0, help="logged seconds of the synthetic bag")
    br.add_argument(
        "--gap-seconds",
        type=float,
        default=20.0,
        help="logged seconds of the nominal-parameter bag the dynamics-gap pass runs on",
    )
    br.add_argument("--json", help="also write the figures to this file")
    br.set_defaults(func=cmd_bench_replay)

    bser = bsub.add_parser(
        "serial", help="round trip and sustained rate of the Dynamixel bus and the motor board over the pty emulators"
    )
    bser.add_argument("--bauds", type=int, nargs="+", default=[1_000_000, 4_000_000])
    bser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    bser.add_argument("--json", help="also write the figures to this file")
    bser.set_defaults(func=cmd_bench_serial)

    r = sub.add_parser(
        "replay",
        help="evaluate and rank policies on a logged rollout "
        "(rosbag2 MCAP bag, or another stack's log through a mapping)",
    )
    r.add_argument(
        "log", help="bag folder or .mcap file; or a foreign log (CSV file or another stack's bag) with --mapping"
    )
    r.add_argument("--policy", action="append", default=[], help="candidate policy.onnx (repeat for several)")
    r.add_argument("--out", required=True, help="folder for report.html, metrics.json and the PNGs")
    r.add_argument("--mapping", help="foreign-log mapping: a shipped name (crazyflie_nanobench) or a YAML file")
    r.add_argument("--fit", help="foreign log: fit the quadrotor model on this other flight, report the gap on LOG")
    r.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("START", "END"),
        help="foreign log with --policy: score only these seconds from the log's first row",
    )
    r.add_argument("--k", type=int, nargs="+", default=[1, 10, 50], help="prediction horizons, control steps")
    r.add_argument("--no-dynamics-gap", action="store_true")
    r.add_argument("--episodes", type=int, default=100, help="simulated episodes per candidate for the ranking")
    r.set_defaults(func=cmd_replay)

    ls = sub.add_parser("tasks", help="list the tasks")
    ls.add_argument(
        "--terms", action="store_true", help="also each task's terms, and every term function with its parameters"
    )
    ls.set_defaults(func=cmd_tasks)

    rl = sub.add_parser("robots", help="list the built-in robots")
    rl.set_defaults(func=cmd_robots)
    ro = sub.add_parser("robot", help="robot configs")
    rosub = ro.add_subparsers(dest="robot_command", required=True)
    rc = rosub.add_parser(
        "check", help="validate a robot config against its model; write a picture of its default pose"
    )
    rc.add_argument("robot", help="robot YAML path or built-in name")
    rc.add_argument("--png", help="picture of the default pose (default: ROBOT.png beside the config)")
    rc.set_defaults(func=cmd_robot_check)

    h = sub.add_parser(
        "hil", help="hardware in the loop: the MuJoCo robot in real time behind its electronics on a pseudo-terminal"
    )
    h.add_argument(
        "--robot",
        required=True,
        help="hardware config: its name in ros_ws/src/s2r_ros/config (open_manipulator_x, quadruped), the robot "
        "it names (go1), or a YAML path",
    )
    h.add_argument("--baud", type=int, help="default: the hardware config's serial.baud")
    h.add_argument("--link", help="keep a symlink here pointing at the pty: a stable path across restarts")
    h.add_argument(
        "--report-s", type=float, default=10.0, help="print the real-time pacing this often (0: only at the end)"
    )
    h.set_defaults(func=cmd_hil)

    hw = sub.add_parser("hw", help="serial hardware tools")
    hwsub = hw.add_subparsers(dest="hw_command", required=True)
    hs = hwsub.add_parser("scan", help="which Dynamixel servos answer on a port, at which baud rate, with which errors")
    hs.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    hs.add_argument("--ids", default="0-20", help="IDs the broadcast pings wait for, e.g. 0-20 or 1,3,11-14")
    hs.add_argument(
        "--bauds", type=int, nargs="+", help="baud rates to try, in order (default: the usual X-series rates)"
    )
    hs.set_defaults(func=cmd_hw_scan)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = rest  # s2r train: config field overrides, parsed by tyro (_apply_overrides)
    errors = _known_errors()
    try:
        args.func(args)
    except errors as e:
        print(f"s2r: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
