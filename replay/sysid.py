"""A small system identification of the quadrotor model against a real Crazyflie 2.1 flight.

What is fitted, from one flight (rows in flight only), and why each step is linear where it can be:
- thrust curve, per rotor: T(u, vbat) in N of the PWM fraction u = pwm / 65535; a few forms are fitted
  by linear least squares of mass * specific force (IMU z) against the rotors' lagged curve terms, and
  the form with the lowest error on the last 30 % of the flight (held out from its fit) is kept;
- motor constants: a thrust gain per rotor (props and motors differ: at hover the logged PWM of m4 is
  ~8 % above m2's), from the roll, pitch and yaw torque balance (Euler's equations with the gyro's
  derivative and the model's inertia), and the yaw torque coefficient (torque / thrust), alternated;
- motor time constant and command delay: a grid search by the 10-step position prediction error of
  the simulated model on the fitting flight (the curve and gains are refitted for each).
Mass is not identifiable from these signals (translation sees only thrust / mass; a joint fit of
mass through the torque equations is ill-conditioned), so it is assumed: 27 g plus markers.

The stock model, for comparison, is what a firmware user assumes without identification: the repo's
nominal quadrotor (27 g, yaw coefficient 0.005964 m, motor tau 0.03 s) with thrust = 0.15 N * pwm / 65535
per rotor (max_thrust_N of quadrotor-hover at full PWM, linear, battery-blind).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from replay.dynamics_gap import Plant, dynamics_gap, predict_windows, valid_starts
from replay.mapping import RIGID, Log, Mapping, import_log, load_mapping
from replay.report import write_sysid_report

STOCK_MJCF = Path(__file__).resolve().parent.parent / "sim" / "robots" / "crazyflie.xml"
PWM_FULL = 65535.0
STOCK_MAX_THRUST_N = 0.15  # quadrotor-hover's max_thrust_N
STOCK_TAU_S = 0.03
STOCK_MASS_KG = 0.027
ASSUMED_MASS_KG = 0.0285  # 27 g take-off mass plus ~1.5 g of motion-capture markers (README: "plus markers")
VBAT_REF_V = 3.7  # nominal cell voltage: curve terms use u * vbat / VBAT_REF_V
FORMS = ("linear", "quadratic", "vbat_linear", "vbat_quadratic")
TAU_GRID_S = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08)
DELAY_GRID = (0, 1, 2)
MIN_HEIGHT_M = 0.15  # rows below are take-off / landing (ground effect, contact)


@dataclass(frozen=True)
class Geometry:
    """What the torque equations need from the MJCF: rotor positions, spin signs, yaw gear, inertia."""

    rotor_xy_m: np.ndarray  # (4, 2)
    spin: np.ndarray  # (4,) sign of each rotor's yaw reaction torque per unit thrust
    yaw_coeff_m: float
    inertia_kgm2: np.ndarray  # (3,) diagonal


@dataclass(frozen=True)
class ThrustCurve:
    """T_i = gain_i * sum_j coeffs_j * term_j(u_i, vbat), u = pwm / 65535; terms per `form`."""

    form: str
    coeffs: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"ThrustCurve.form: '{self.form}' is not one of {FORMS}")

    def thrust_N(self, pwm: np.ndarray, vbat_V: np.ndarray | None) -> np.ndarray:
        """(T, 4) rotor thrust before the per-rotor gain, from (T, 4) PWM and (T, 1) battery volts."""
        return curve_terms(self.form, pwm, vbat_V) @ np.asarray(self.coeffs)


@dataclass(frozen=True)
class SysIdResult:
    curve: ThrustCurve
    rotor_gain: tuple[float, ...]  # per rotor, m1..m4
    yaw_coeff_m: float  # yaw reaction torque / thrust
    tau_s: float
    delay_steps: int
    mass_kg: float
    form_holdout_rms_N: dict[str, float]  # force residual on the held-out 30 % of the fit flight, per form
    grid_pos10_m: dict[str, float]  # "tau_s,delay": mean 10-step position error on the fit flight
    max_thrust_N: float  # rotor command clamp: the curve at full PWM and a full battery

    def thrust_N(self, log: Log) -> np.ndarray:
        return self.curve.thrust_N(log["motor_cmd"], log.vbat_V)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["curve"] = {
            "form": self.curve.form,
            "coeffs": list(self.curve.coeffs),
            "vbat_ref_V": VBAT_REF_V,
            "u": "pwm / 65535",
            "thrust_N": _curve_text(self.curve.form),
        }
        return d


def _curve_text(form: str) -> str:
    w = "(u * vbat / vbat_ref)" if form.startswith("vbat") else "u"
    return f"gain_i * (c0 * {w} + c1 * {w}^2)" if form.endswith("quadratic") else f"gain_i * c0 * {w}"


# --- pure math -------------------------------------------------------------------------------------
def curve_terms(form: str, pwm: np.ndarray, vbat_V: np.ndarray | None) -> np.ndarray:
    """(T, 4, n_terms) regressors of the thrust curve `form`."""
    w = pwm / PWM_FULL
    if form.startswith("vbat"):
        if vbat_V is None:
            raise ValueError(f"thrust curve '{form}' needs the battery voltage (vbat_V) in the log")
        w = w * vbat_V / VBAT_REF_V
    return w[..., None] if form.endswith("linear") else np.stack((w, w * w), -1)


def motor_lag(x: np.ndarray, tau_s: float, dt_s: float, delay_steps: int) -> np.ndarray:
    """(T, ...) commands -> what the rotor model makes of them: delayed by `delay_steps`, then the
    same exact first-order discretization as sim.actuators.RotorModel (linear, so it commutes with
    the curve's coefficients)."""
    alpha = 1.0 - np.exp(-dt_s / tau_s)
    xs = np.concatenate((np.repeat(x[:1], delay_steps + 1, 0), x[: len(x) - delay_steps - 1]))
    y = np.empty_like(x)
    y[0] = x[0]
    for i in range(1, len(x)):
        y[i] = y[i - 1] + alpha * (xs[i] - y[i - 1])
    return y


def body_torque_Nm(ang_vel_b_radps: np.ndarray, dt_s: float, inertia_kgm2: np.ndarray) -> np.ndarray:
    """(T, 3) torque that Euler's equations need for the logged body rates: I w' + w x I w."""
    w = ang_vel_b_radps
    return inertia_kgm2 * np.gradient(w, dt_s, axis=0) + np.cross(w, inertia_kgm2 * w)


def read_geometry(mjcf_path: str | Path) -> Geometry:
    import mujoco

    m = mujoco.MjModel.from_xml_path(str(mjcf_path))
    base = m.body("base").id
    sites = [m.actuator_trnid[i, 0] for i in range(m.nu)]
    gear_z = m.actuator_gear[:, 2]
    return Geometry(
        np.array([m.site_pos[s][:2] for s in sites]),
        np.sign(m.actuator_gear[:, 5]),
        float(np.abs(m.actuator_gear[:, 5] / gear_z).mean()),
        m.body_inertia[base].copy(),
    )


def fit_curve_and_gains(
    terms: np.ndarray, force_N: np.ndarray, torque_Nm: np.ndarray, geo: Geometry, form: str, iters: int = 4
) -> tuple[ThrustCurve, np.ndarray, float]:
    """Alternating linear least squares on in-flight rows.

    terms (n, 4, n_terms): lagged curve regressors; force_N (n,): mass * IMU z specific force;
    torque_Nm (n, 3): Euler torque. Returns the curve, per-rotor gains (mean 1) and the yaw coefficient.
    Torque rows are divided by the rotor arm, so every row is in newtons of thrust.
    """
    arm_m = np.linalg.norm(geo.rotor_xy_m, axis=1).mean() / np.sqrt(2)
    gain, yaw = np.ones(4), geo.yaw_coeff_m
    for _ in range(iters):
        coeffs = np.linalg.lstsq(np.einsum("nrj,r->nj", terms, gain), force_N, rcond=None)[0]
        thrust = terms @ coeffs  # (n, 4) before gains
        rows = np.concatenate(
            (
                thrust,
                thrust * geo.rotor_xy_m[:, 1] / arm_m,  # roll: y_i T_i
                -thrust * geo.rotor_xy_m[:, 0] / arm_m,  # pitch: -x_i T_i
                thrust * geo.spin * yaw / arm_m,  # yaw: s_i kappa T_i
            )
        )
        target = np.concatenate((force_N, torque_Nm[:, 0] / arm_m, torque_Nm[:, 1] / arm_m, torque_Nm[:, 2] / arm_m))
        # solved as deviations from 1: a direction the rows cannot see (min-norm) stays at gain 1
        gain = 1.0 + np.linalg.lstsq(rows, target - rows.sum(1), rcond=None)[0]
        gain = gain / gain.mean()  # the curve carries the scale
        yaw_terms = (thrust * gain * geo.spin).sum(1)
        yaw = float(yaw_terms @ torque_Nm[:, 2] / (yaw_terms @ yaw_terms))
    coeffs = np.linalg.lstsq(np.einsum("nrj,r->nj", terms, gain), force_N, rcond=None)[0]
    return ThrustCurve(form, tuple(float(c) for c in coeffs)), gain, yaw


def in_flight(log: Log) -> np.ndarray:
    """(T,) rows with every motor running and the body clear of the ground."""
    return (log["motor_cmd"] > 0).all(1) & (log["pos_w_m"][:, 2] > MIN_HEIGHT_M)


# --- model variants --------------------------------------------------------------------------------
def stock_plant() -> Plant:
    return Plant("stock", str(STOCK_MJCF), STOCK_TAU_S, STOCK_MAX_THRUST_N)


def stock_thrust_N(log: Log) -> np.ndarray:
    """The firmware user's assumption: thrust = 0.15 N * pwm / 65535, per rotor."""
    return STOCK_MAX_THRUST_N * log["motor_cmd"] / PWM_FULL


def write_variant_mjcf(path: Path, mass_kg: float, rotor_gain: np.ndarray, yaw_coeff_m: float, note: str) -> None:
    """Copy of the stock MJCF with the fitted mass and actuator gears (thrust gain, yaw coefficient)."""
    tree = ET.parse(STOCK_MJCF, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    root = tree.getroot()
    root.insert(0, ET.Comment(f" {note} "))
    inertial = root.find(".//body[@name='base']/inertial")
    if inertial is None:
        raise ValueError(f"{STOCK_MJCF}: body 'base' has no inertial")
    inertial.set("mass", f"{mass_kg:.6g}")
    for act, g in zip(root.findall("actuator/general"), rotor_gain, strict=True):
        gear = act.get("gear")
        if gear is None:
            raise ValueError(f"{STOCK_MJCF}: actuator {act.get('name')} has no gear")
        sign = np.sign(float(gear.split()[5]))
        act.set("gear", f"0 0 {g:.6g} 0 0 {sign * yaw_coeff_m * g:.6g}")
    tree.write(path, encoding="unicode")


def fit_crazyflie(
    log: Log, out_dir: Path, mass_kg: float = ASSUMED_MASS_KG, holdout: float = 0.3
) -> tuple[SysIdResult, Plant]:
    """Fit the thrust curve, motor constants and lag to one flight; write the variant MJCF into out_dir."""
    dt_s = log.clock.period_s
    geo = read_geometry(STOCK_MJCF)
    fly = in_flight(log)
    rows = np.flatnonzero(fly)
    split = rows[int(len(rows) * (1 - holdout))]
    force_N = mass_kg * log["specific_force_b_mps2"][:, 2]
    torque = body_torque_Nm(log["ang_vel_b_radps"], dt_s, geo.inertia_kgm2)

    def fit(form: str, tau_s: float, delay: int, mask: np.ndarray):
        terms = motor_lag(curve_terms(form, log["motor_cmd"], log.vbat_V), tau_s, dt_s, delay)
        return fit_curve_and_gains(terms[mask], force_N[mask], torque[mask], geo, form), terms

    # 1. the curve's form, by the force residual on the held-out tail of the flight
    holdout_rms: dict[str, float] = {}
    for form in FORMS:
        (curve, gain, _), terms = fit(form, STOCK_TAU_S, 0, fly & (np.arange(len(log)) < split))
        tail = fly & (np.arange(len(log)) >= split)
        pred = (terms[tail] @ np.asarray(curve.coeffs) * gain).sum(1)
        holdout_rms[form] = float(np.sqrt(np.mean((pred - force_N[tail]) ** 2)))
    form = min(holdout_rms, key=holdout_rms.__getitem__)

    # 2. motor lag and delay, by the simulated 10-step position error (curve and gains refitted)
    out_dir.mkdir(parents=True, exist_ok=True)
    mjcf = out_dir / "quadrotor_crazyflie_fit.xml"
    grid, best = {}, None
    for tau_s in TAU_GRID_S:
        for delay in DELAY_GRID:
            (curve, gain, yaw), _ = fit(form, tau_s, delay, fly)
            write_variant_mjcf(mjcf, mass_kg, gain, yaw, "fitted Crazyflie variant (replay/sysid.py)")
            max_N = float(curve.thrust_N(np.full((1, 4), PWM_FULL), np.full((1, 1), 4.2)).max())
            plant = Plant("fitted", str(mjcf), tau_s, max_N, delay)
            gap = dynamics_gap(log, curve.thrust_N(log["motor_cmd"], log.vbat_V), plant, ks=(10,), valid=fly, stride=2)
            grid[f"{tau_s},{delay}"] = err = gap["k"]["10"]["pos_m"]["norm"]["mean"]
            if best is None or err < best[0]:
                best = (err, tau_s, delay, curve, gain, yaw, max_N)
    assert best is not None  # the grid is not empty
    _, tau_s, delay, curve, gain, yaw, max_N = best
    note = (
        f"Crazyflie 2.1 variant fitted by replay/sysid.py: mass {mass_kg} kg (assumed), rotor thrust gains "
        f"{np.round(gain, 4).tolist()}, yaw coefficient {yaw:.6g} m; thrust curve, motor tau {tau_s} s and "
        f"delay {delay} steps in sysid.json"
    )
    write_variant_mjcf(mjcf, mass_kg, gain, yaw, note)
    result = SysIdResult(curve, tuple(float(g) for g in gain), yaw, tau_s, delay, mass_kg, holdout_rms, grid, max_N)
    return result, Plant("fitted", str(mjcf), tau_s, max_N, delay)


# --- the report ------------------------------------------------------------------------------------
def crazyflie_report(
    fit_csv: str | Path, eval_csv: str | Path, mapping: Mapping | str | Path, out_dir: str | Path
) -> dict:
    """Import two flights, fit the model on `fit_csv`, and report the dynamics gap of the stock and the
    fitted model on `eval_csv` (and, for reference, on the fitting flight) for k = 1, 10, 50.

    Writes sysid.json, quadrotor_crazyflie_fit.xml, dynamics_gap.json, gap_errors.png,
    heldout_predictions.png, and metrics.json with report.html (replay.report, as every replay mode) into
    out_dir; returns metrics.json's "sysid" section: the dynamics_gap.json content, the fitted
    parameters (sysid.json) and the plots' names.
    """
    out_dir = Path(out_dir)
    mapping = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    mapping.require(RIGID, "system identification and the dynamics gap")
    fit_log, eval_log = import_log(fit_csv, mapping), import_log(eval_csv, mapping)
    result, fitted = fit_crazyflie(fit_log, out_dir)
    parameters = {
        "fit_flight": str(fit_csv),
        "stock_thrust": "0.15 N * pwm / 65535 per rotor, 27 g, tau 0.03 s",
        **result.to_dict(),
        "variant_mjcf": Path(fitted.mjcf_path).name,
    }
    (out_dir / "sysid.json").write_text(json.dumps(parameters, indent=2))
    stock = stock_plant()
    ks = (1, 10, 50)
    metrics: dict = {
        "fit_flight": str(fit_csv),
        "heldout_flight": str(eval_csv),
        "stock_model": "quadrotor.xml (27 g), thrust = 0.15 N * pwm / 65535 per rotor, tau 0.03 s",
        "fitted_model": Path(fitted.mjcf_path).name + " + sysid.json",
        "clock": {"fit": fit_log.clock.to_dict(), "heldout": eval_log.clock.to_dict()},
        "recovery_notes": {"fit": list(fit_log.notes), "heldout": list(eval_log.notes)},  # where a flight was cut
    }
    for which, log in (("heldout", eval_log), ("fit", fit_log)):
        fly = in_flight(log)
        metrics[which] = {
            "stock": dynamics_gap(log, stock_thrust_N(log), stock, ks, valid=fly),
            "fitted": dynamics_gap(log, result.thrust_N(log), fitted, ks, valid=fly),
        }
    (out_dir / "dynamics_gap.json").write_text(json.dumps(metrics, indent=2))
    plot_errors(metrics["heldout"], out_dir / "gap_errors.png", Path(eval_csv).stem)
    plot_predictions(
        eval_log,
        {"stock": (stock, stock_thrust_N(eval_log)), "fitted": (fitted, result.thrust_N(eval_log))},
        out_dir / "heldout_predictions.png",
    )
    section = {**metrics, "parameters": parameters, "plots": ["gap_errors.png", "heldout_predictions.png"]}
    write_sysid_report(
        {
            "log": str(eval_csv),
            "mapping": mapping.where or mapping.description,
            "recovery_notes": list(eval_log.notes),
            "sysid": section,
        },
        out_dir,
    )
    return section


def plot_errors(gaps: dict, path: Path, title: str) -> None:
    """Bars of the mean k-step error norms, stock vs fitted, per quantity (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(gaps["stock"]["k"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (q, label) in zip(
        axes, (("pos_m", "position (m)"), ("vel_mps", "velocity (m/s)"), ("att_rad", "attitude (rad)")), strict=True
    ):
        x = np.arange(len(ks))
        for j, name in enumerate(("stock", "fitted")):
            ax.bar(x + (j - 0.5) * 0.38, [gaps[name]["k"][k][q]["norm"]["mean"] for k in ks], 0.38, label=name)
        ax.set_xticks(x, [f"k={k}" for k in ks])
        ax.set_yscale("log")
        ax.set_title(f"mean {label}")
    axes[0].legend()
    fig.suptitle(f"k-step prediction error on held-out flight {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_predictions(
    log: Log, models: dict[str, tuple[Plant, np.ndarray]], path: Path, horizon: int = 50, span_s: float = 8.0
) -> None:
    """Logged position and open-loop 0.5 s predictions started every 0.5 s over the middle of the flight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.flatnonzero(in_flight(log))
    mid, n = rows[len(rows) // 2], int(span_s / log.clock.period_s)
    history = max(p.delay_steps + p.warmup_steps(log.clock.period_s) for p, _ in models.values())
    starts = valid_starts(log, horizon, history, in_flight(log), stride=horizon)
    starts = starts[(starts >= mid - n // 2) & (starts < mid + n // 2)]
    t = log.t_s - log.t_s[0]
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    seg = slice(mid - n // 2, mid + n // 2 + horizon)
    for i, ax in enumerate(axes):
        ax.plot(t[seg], log["pos_w_m"][seg, i], "k", lw=2, label="logged")
        ax.set_ylabel(f"{'xyz'[i]} (m)")
    for (name, (plant, thrust)), color in zip(models.items(), ("tab:red", "tab:blue"), strict=True):
        pred = predict_windows(log, thrust, plant, starts, horizon)
        for j, s in enumerate(starts):
            for i, ax in enumerate(axes):
                ax.plot(
                    t[s + 1 : s + horizon + 1],
                    pred[j, :, i],
                    color=color,
                    lw=1,
                    label=name if j == 0 and i == 0 else None,
                )
    axes[0].legend(loc="upper right")
    axes[0].set_title(f"{Path(log.source).stem}: logged vs {horizon}-step open-loop predictions")
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
