"""Foreign logs: a small YAML mapping file says where each quantity the replay needs lives in
another stack's log, and in what units, so CSV logs and bags from other stacks replay unchanged.

A mapping names, per quantity, the CSV columns (or, for bags, a topic and message field paths),
and the conversion to this stack's units: `value = (raw * scale + offset)`, then `unit: deg` to
radians, then `quat_order: xyzw` reordered to w, x, y, z; joint quantities may name the joint of
each field. It is validated at load; an error names the bad key. What a use needs is checked when
it starts (`Mapping.require`): the rigid-body quantities for system identification and the dynamics
gap, the PolicySpec's robot readings (READING_QUANTITIES) for scoring policies.

`iter_log` streams a CSV file (`iter_csv`) or another stack's bag (`iter_bag`, each topic's newest
message held on the time entry's clock) in chunks of rows; clock jumps (time not increasing) and
gaps (> 1.5 periods, i.e. dropped rows) are counted in the log's `ClockReport`, not fatal. A log cut
mid-write (a CSV's unfinished last line, a bag's unfinished record) is read up to the cut, with a note
naming it; a malformed row anywhere else stops with its file, line and column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import yaml

from deploy.rotations import quat_to_rotmat, world_to_body

MAPPINGS_DIR = Path(__file__).resolve().parent / "mappings"

# what replaying a rigid-body robot's commands in simulation needs (system identification, dynamics gap)
RIGID = ("pos_w_m", "quat_wxyz", "lin_vel_w_mps", "ang_vel_b_radps", "motor_cmd")
# quantity -> size (None: any)
KNOWN_SIZES = {
    "pos_w_m": 3,
    "quat_wxyz": 4,
    "lin_vel_w_mps": 3,
    "ang_vel_b_radps": 3,
    "motor_cmd": None,
    "vbat_V": 1,
    "lin_vel_b_mps": 3,
    "joint_pos_rad": None,
    "joint_vel_radps": None,
    "command": 3,
    "target_pos_w_m": 3,
}
# a quantity the mapping does not name is derived on import from these, when it names them
DERIVED = {"lin_vel_b_mps": ("quat_wxyz", "lin_vel_w_mps"), "lin_vel_w_mps": ("quat_wxyz", "lin_vel_b_mps")}
JOINT_QUANTITIES = ("joint_pos_rad", "joint_vel_radps")  # may label their fields with joint names
# PolicySpec robot reading (deploy.signals.READINGS) -> the log quantity it is read from
READING_QUANTITIES = {
    "base_pos_w": "pos_w_m",
    "base_quat_wxyz": "quat_wxyz",
    "base_lin_vel_b": "lin_vel_b_mps",
    "base_ang_vel_b": "ang_vel_b_radps",
    "joint_pos": "joint_pos_rad",
    "joint_vel": "joint_vel_radps",
    "command": "command",
    "target_pos_w": "target_pos_w_m",
}
FORMATS = ("csv", "bag")
UNITS = ("", "rad", "deg")
QUAT_ORDERS = ("wxyz", "xyzw")
TOP_KEYS = ("description", "format", "rate_hz", "time", "quantities")
ENTRY_KEYS = ("fields", "topic", "scale", "offset", "unit", "quat_order", "joints")


class MappingError(ValueError):
    """A mapping file is malformed, or a log lacks what the mapping names; the message names it."""


@dataclass(frozen=True)
class Entry:
    """One quantity: its source fields (CSV columns or message field paths) and unit conversion."""

    name: str
    fields: tuple[str, ...]
    topic: str | None = None  # bags only
    scale: tuple[float, ...] = (1.0,)  # one value, or one per field
    offset: tuple[float, ...] = (0.0,)
    unit: str = ""  # "deg": converted to rad after scale/offset
    quat_order: str = "wxyz"  # order of the four fields; output is always w, x, y, z
    joints: tuple[str, ...] = ()  # joint quantities: the joint each field belongs to

    @property
    def size(self) -> int:
        return len(self.fields)

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """(n, size) raw values -> (n, size) values in this stack's units."""
        out = raw * np.asarray(self.scale) + np.asarray(self.offset)
        if self.unit == "deg":
            out = np.deg2rad(out)
        if self.quat_order == "xyzw":
            out = out[:, [3, 0, 1, 2]]
        return out

    def from_message(self, msg) -> np.ndarray:
        """(size,) converted values read from one decoded bag message by the field paths."""
        raw = np.array([[_as_float(get_field(msg, path), path) for path in self.fields]])
        return self.convert(raw)[0]


@dataclass(frozen=True)
class Mapping:
    description: str
    format: str  # "csv" or "bag"
    rate_hz: float  # nominal sample rate: gaps are intervals longer than 1.5 periods
    time: Entry  # one field, seconds after conversion
    quantities: tuple[Entry, ...]
    where: str = ""  # the file it was read from

    def entry(self, name: str, why: str = "") -> Entry:
        for e in self.quantities:
            if e.name == name:
                return e
        raise MappingError(
            f"mapping{' ' + self.where if self.where else ''} has no quantity '{name}'"
            + (f" ({why})" if why else "")
            + f"; it has {[e.name for e in self.quantities]}"
        )

    def require(self, names, why: str) -> None:
        """MappingError naming the first of `names` the mapping neither names nor derives, and what it is
        needed for."""
        mapped = {e.name for e in self.quantities}
        for name in names:
            if name not in mapped and not (name in DERIVED and set(DERIVED[name]) <= mapped):
                self.entry(name, why)


def get_field(msg, path: str):
    """The value at a dotted field path of a decoded message: attributes, dict keys, `[i]` indices.

    `get_field(odom, "pose.pose.position.x")`, `get_field(arr, "data[2]")`; a missing part raises
    MappingError naming it and the path.
    """
    value = msg
    for part in path.split("."):
        name, _, index = part.partition("[")
        try:
            if name:
                value = value[name] if isinstance(value, dict) else getattr(value, name)
            if index:
                value = value[int(index.rstrip("]"))]
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
            raise MappingError(f"field path '{path}': no '{part}' in {type(value).__name__}") from e
    return value


def _as_float(value, path: str) -> float:
    """A number, or a ROS time stamp (sec, nanosec) in seconds."""
    if hasattr(value, "sec") and hasattr(value, "nanosec"):
        return value.sec + 1e-9 * value.nanosec
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise MappingError(f"field path '{path}': {type(value).__name__} is not a number") from e


# --- loading ---------------------------------------------------------------------------------------
def load_mapping(path: str | Path) -> Mapping:
    """Read and validate a mapping YAML; a bare name (`crazyflie_nanobench`) is a shipped mapping."""
    path = Path(path)
    if not path.suffix and not path.exists():
        path = MAPPINGS_DIR / f"{path}.yaml"
    if not path.is_file():
        raise MappingError(f"mapping file not found: {path}")
    with open(path) as f:
        raw = yaml.safe_load(f)
    return parse_mapping(raw, where=str(path))


def parse_mapping(raw, where: str = "mapping") -> Mapping:
    """Validate a mapping given as plain data (what the YAML holds)."""

    def fail(key: str, msg: str) -> NoReturn:
        raise MappingError(f"{where}: {key}: {msg}")

    if not isinstance(raw, dict):
        fail("(top level)", f"expected a mapping of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            fail(key, f"unknown key (allowed: {', '.join(TOP_KEYS)})")
    for key in ("format", "rate_hz", "quantities"):
        if key not in raw:
            fail(key, "missing")
    fmt = raw["format"]
    if fmt not in FORMATS:
        fail("format", f"'{fmt}' is not one of {FORMATS}")
    rate = raw["rate_hz"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        fail("rate_hz", f"must be a number > 0, got {rate!r}")
    if not isinstance(raw["quantities"], dict) or not raw["quantities"]:
        fail("quantities", "must map quantity names to entries")
    quantities = tuple(_parse_entry(name, e, fmt, f"quantities.{name}", fail) for name, e in raw["quantities"].items())
    for e in quantities:
        size = KNOWN_SIZES.get(e.name)
        if size is not None and e.size != size:
            fail(f"quantities.{e.name}.fields", f"needs {size} fields, got {e.size}")
    if "time" in raw:
        time = _parse_entry("t_s", raw["time"], fmt, "time", fail)
        if time.size != 1:
            fail("time.fields", f"needs 1 field, got {time.size}")
    elif fmt == "csv":
        fail("time", "missing (a CSV needs a time column)")
    else:
        fail("time", "missing (name the topic and field whose stamps give each row's time)")
    return Mapping(str(raw.get("description", "")), fmt, float(rate), time, quantities, where)


def _parse_entry(name: str, raw, fmt: str, key: str, fail: Callable[[str, str], NoReturn]) -> Entry:
    if not isinstance(raw, dict):
        fail(key, f"expected keys {ENTRY_KEYS}, got {raw!r}")
    for k in raw:
        if k not in ENTRY_KEYS:
            fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(ENTRY_KEYS)})")
    fields = raw.get("fields")
    if isinstance(fields, str):
        fields = [fields]
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f for f in fields):
        fail(f"{key}.fields", f"must be a non-empty list of column names or field paths, got {fields!r}")
    topic = raw.get("topic")
    if fmt == "bag" and not isinstance(topic, str):
        fail(f"{key}.topic", "missing (a bag mapping names the topic of every quantity)")
    if fmt == "csv" and topic is not None:
        fail(f"{key}.topic", "only bags have topics")

    def numbers(k: str, default: float) -> tuple[float, ...]:
        v = raw.get(k, default)
        v = v if isinstance(v, list) else [v]
        if len(v) not in (1, len(fields)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
        ):
            fail(f"{key}.{k}", f"must be a number or one number per field ({len(fields)}), got {raw.get(k)!r}")
        return tuple(float(x) for x in v)

    unit = raw.get("unit", "")
    if unit not in UNITS:
        fail(f"{key}.unit", f"'{unit}' is not one of {UNITS}")
    order = raw.get("quat_order", "wxyz")
    if order not in QUAT_ORDERS:
        fail(f"{key}.quat_order", f"'{order}' is not one of {QUAT_ORDERS}")
    if "quat_order" in raw and len(fields) != 4:
        fail(f"{key}.quat_order", f"applies to 4 fields, got {len(fields)}")
    joints = raw.get("joints", [])
    if joints and name not in JOINT_QUANTITIES:
        fail(f"{key}.joints", f"only joint quantities {JOINT_QUANTITIES} name their joints")
    if (
        not isinstance(joints, list)
        or not all(isinstance(j, str) and j for j in joints)
        or (joints and len(joints) != len(fields))
    ):
        fail(f"{key}.joints", f"must list one joint name per field ({len(fields)}), got {joints!r}")
    if len(set(joints)) != len(joints):
        fail(f"{key}.joints", f"names a joint twice: {joints}")
    return Entry(name, tuple(fields), topic, numbers("scale", 1.0), numbers("offset", 0.0), unit, order, tuple(joints))


# --- the log ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClockReport:
    """Irregular sample intervals: counted and located, never fatal."""

    samples: int
    period_s: float
    jumps: int  # intervals <= 0: the clock stood still or went back
    gaps: int  # intervals > 1.5 periods
    dropped: int  # samples missing in the gaps (interval / period - 1, rounded)
    first_jumps: tuple[int, ...] = ()  # sample indices after the irregular interval (first 10)
    first_gaps: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Log:
    """A log in this stack's units: `t_s` (T,) and named arrays (T, k), rows aligned with it; a
    quantity the mapping does not name is None (or absent from `extra`).

    quat_wxyz is body-to-world; ang_vel_b_radps in the body frame (as MuJoCo's free joint);
    motor_cmd in the source's raw units; `step_ok[i]` says the interval t[i-1] -> t[i] is one period.
    """

    t_s: np.ndarray  # (T,)
    step_ok: np.ndarray  # (T,) bool
    clock: ClockReport
    pos_w_m: np.ndarray | None = None  # (T, 3)
    quat_wxyz: np.ndarray | None = None  # (T, 4), unit
    lin_vel_w_mps: np.ndarray | None = None  # (T, 3)
    lin_vel_b_mps: np.ndarray | None = None  # (T, 3)
    ang_vel_b_radps: np.ndarray | None = None  # (T, 3)
    motor_cmd: np.ndarray | None = None  # (T, num_motors)
    vbat_V: np.ndarray | None = None  # (T, 1)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # whatever else the mapping names
    source: str = ""
    notes: tuple[str, ...] = ()  # where a log cut short was cut (import_log)

    def __len__(self) -> int:
        return len(self.t_s)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.extra:
            return self.extra[name]
        if name in LOG_FIELDS and getattr(self, name) is not None:
            return getattr(self, name)
        raise MappingError(f"log {self.source} has no quantity '{name}'")


LOG_FIELDS = ("pos_w_m", "quat_wxyz", "lin_vel_w_mps", "lin_vel_b_mps", "ang_vel_b_radps", "motor_cmd", "vbat_V")


def clock_report(
    t_s: np.ndarray, period_s: float, t_prev: float | None = None, first_row: int = 0
) -> tuple[ClockReport, np.ndarray]:
    """Count clock jumps and gaps in `t_s` (T,), continuing after `t_prev`; also step_ok (T,). Irregular
    rows are located as `first_row` + their index (a chunk's place in the whole log)."""
    dt = np.diff(t_s, prepend=t_s[0] - period_s if t_prev is None else t_prev)
    jump = dt <= 0
    gap = dt > 1.5 * period_s
    dropped = int(np.round(dt[gap] / period_s).sum() - gap.sum())
    report = ClockReport(
        len(t_s),
        period_s,
        int(jump.sum()),
        int(gap.sum()),
        dropped,
        tuple((first_row + np.flatnonzero(jump)[:10]).tolist()),
        tuple((first_row + np.flatnonzero(gap)[:10]).tolist()),
    )
    return report, ~(jump | (dt < 0.5 * period_s) | gap)


def merge_clocks(a: ClockReport, b: ClockReport) -> ClockReport:
    """Reports of consecutive stretches of one log as one (row indices already count from its start)."""
    return ClockReport(
        a.samples + b.samples,
        a.period_s,
        a.jumps + b.jumps,
        a.gaps + b.gaps,
        a.dropped + b.dropped,
        (a.first_jumps + b.first_jumps)[:10],
        (a.first_gaps + b.first_gaps)[:10],
    )


def make_log(
    t_s: np.ndarray, values: dict[str, np.ndarray], clock: ClockReport, step_ok: np.ndarray, source: str
) -> Log:
    """Assemble a Log from converted (T, k) arrays: normalize the quaternion, derive the linear velocity
    in the frame the mapping does not give (world from body, or body from world)."""
    values = dict(values)
    if "quat_wxyz" in values:
        values["quat_wxyz"] = values["quat_wxyz"] / np.linalg.norm(values["quat_wxyz"], axis=-1, keepdims=True)
        rot = quat_to_rotmat(values["quat_wxyz"])
        if "lin_vel_b_mps" not in values and "lin_vel_w_mps" in values:
            values["lin_vel_b_mps"] = world_to_body(rot, values["lin_vel_w_mps"])
        if "lin_vel_w_mps" not in values and "lin_vel_b_mps" in values:
            values["lin_vel_w_mps"] = (rot @ values["lin_vel_b_mps"][..., None])[..., 0]
    extra = {k: v for k, v in values.items() if k not in LOG_FIELDS}
    return Log(
        t_s,
        step_ok,
        clock,
        **{k: v for k, v in values.items() if k in LOG_FIELDS},
        extra=extra,
        source=source,
        notes=(),
    )


# --- CSV -------------------------------------------------------------------------------------------
def iter_csv(
    path: str | Path, mapping: Mapping, chunk_rows: int = 4096, notes: list[str] | None = None
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (t_s (n,), {quantity: (n, k)}) per chunk of rows: memory bounded by the chunk, not the file.

    A column the mapping names and the header lacks raises MappingError naming column and entry.
    Empty cells read as NaN. A last line without its line end and with a cell missing or not a number
    is a logger cut mid-write: it is left out, with a note appended to `notes` naming it (a MappingError
    when no complete row precedes it). Any other such row raises MappingError naming file, line and column.
    """
    if mapping.format != "csv":
        raise MappingError(f"mapping format is '{mapping.format}', not csv")
    path = Path(path)
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 1))
        terminated = f.read(1) in (b"\n", b"\r")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise MappingError(f"{path}: empty file, no header row") from None
        index = {h: i for i, h in enumerate(header)}
        entries = (mapping.time,) + mapping.quantities
        for e in entries:
            for col in e.fields:
                if col not in index:
                    key = "time" if e is mapping.time else f"quantities.{e.name}"
                    cut = "" if terminated or next(reader, None) is not None else "; line 1, the header, is cut short"
                    raise MappingError(f"{path}: column '{col}' (mapping entry {key}) is not in the CSV header{cut}")
        cols = [[index[c] for c in e.fields] for e in entries]
        flat = [i for c in cols for i in c]
        rows: list[list[float]] = []
        last_line = 0  # the last data line read whole
        for row in reader:
            if not row:
                continue
            values, bad = _parse_row(row, flat, header)
            if bad:
                line = reader.line_num
                if terminated or next(reader, None) is not None:
                    raise MappingError(f"{path}, line {line}, {bad}")
                if not last_line:
                    raise MappingError(
                        f"{path}: line {line}, its first data row, is cut short ({bad}): no complete row"
                    )
                if notes is not None:
                    notes.append(
                        f"{path.name} ends inside line {line} ({bad}), its writer did not finish it: "
                        f"read up to line {last_line}"
                    )
                break
            rows.append(values)
            last_line = reader.line_num
            if len(rows) == chunk_rows:
                yield _convert(rows, entries, cols)
                rows = []
        if rows:
            yield _convert(rows, entries, cols)


def _parse_row(row: list[str], flat: list[int], header: list[str]) -> tuple[list[float], str]:
    """The row's values in `flat` column order (empty cells NaN), or what is wrong with it: "column 'NAME': ..."."""
    values = []
    for i in flat:
        if i >= len(row):
            return [], f"column '{header[i]}': missing, the line has {len(row)} of the header's {len(header)} cells"
        cell = row[i].strip()
        try:
            values.append(float(cell) if cell else math.nan)
        except ValueError:
            return [], f"column '{header[i]}': {cell!r} is not a number"
    return values, ""


def _convert(rows: list[list[float]], entries: tuple[Entry, ...], cols: list[list[int]]):
    raw = np.asarray(rows, dtype=np.float64)
    out, j = {}, 0
    for e, c in zip(entries, cols, strict=True):
        out[e.name] = e.convert(raw[:, j : j + len(c)])
        j += len(c)
    return out.pop("t_s")[:, 0], out


# --- bags ------------------------------------------------------------------------------------------
def iter_bag(
    path: str | Path, mapping: Mapping, chunk_rows: int = 4096, notes: list[str] | None = None
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (t_s (n,), {quantity: (n, k)}) per chunk of rows of another stack's rosbag2 bag.

    Rows are the messages of the time entry's topic; every other quantity takes the newest message of
    its topic at or before that row (what a controller on that clock would have seen). Rows before
    every quantity has been seen once are left out. A topic the bag lacks raises naming it. A bag cut
    short is read to its last complete record, what was recovered appended to `notes`.
    """
    from replay.bag import BagReader

    if mapping.format != "bag":
        raise MappingError(f"mapping format is '{mapping.format}', not bag")

    def absolute(topic: str) -> str:
        return "/" + topic.lstrip("/")

    def entry_topic(e: Entry) -> str:
        if e.topic is None:  # parse_mapping requires a topic for every entry of a bag mapping
            raise MappingError(f"mapping entry '{e.name}' names no topic (a bag mapping needs one per entry)")
        return absolute(e.topic)

    by_topic: dict[str, list[Entry]] = {}
    for e in mapping.quantities:
        by_topic.setdefault(entry_topic(e), []).append(e)
    clock_topic = entry_topic(mapping.time)
    latest: dict[str, np.ndarray] = {}
    times: list[float] = []
    rows: dict[str, list[np.ndarray]] = {e.name: [] for e in mapping.quantities}

    def chunk():
        out = (np.asarray(times), {k: np.stack(v) for k, v in rows.items()})
        times.clear()
        for v in rows.values():
            v.clear()
        return out

    reader = BagReader(path)
    if notes is not None:
        notes.extend(reader.notes)
    for m in reader.messages(sorted(set(by_topic) | {clock_topic})):
        topic = absolute(m.topic)
        for e in by_topic.get(topic, ()):
            latest[e.name] = e.from_message(m.msg)
        if topic == clock_topic and len(latest) == len(rows):
            times.append(float(mapping.time.from_message(m.msg)[0]))
            for name, value in latest.items():
                rows[name].append(value)
            if len(times) == chunk_rows:
                yield chunk()
    if times:
        yield chunk()


# --- either ----------------------------------------------------------------------------------------
def iter_log(
    path: str | Path, mapping: Mapping | str | Path, chunk_rows: int = 4096, notes: list[str] | None = None
) -> Iterator[Log]:
    """A foreign log (a CSV file or a rosbag2 bag, as the mapping's format says) as Logs of at most
    `chunk_rows` rows, memory bounded by the chunk: the clock report continues across chunks and
    indexes rows from the start of the log. A log cut short is read up to its cut, a note saying
    where appended to `notes`."""
    if not isinstance(mapping, Mapping):
        mapping = load_mapping(mapping)
    read = iter_bag if mapping.format == "bag" else iter_csv
    chunks = read(path, mapping, chunk_rows, notes)
    period_s, t_prev, offset = 1.0 / mapping.rate_hz, None, 0
    for t_s, values in chunks:
        report, ok = clock_report(t_s, period_s, t_prev, offset)
        yield make_log(t_s, values, report, ok, str(path))
        t_prev, offset = t_s[-1], offset + len(t_s)


def import_log(path: str | Path, mapping: Mapping | str | Path, chunk_rows: int = 4096) -> Log:
    """A whole foreign log through its mapping (a Mapping, a YAML path or a shipped mapping name)."""
    notes: list[str] = []
    chunks = list(iter_log(path, mapping, chunk_rows, notes))
    if not chunks:
        raise MappingError(
            f"{path}: no data rows" + (" with every quantity of the mapping seen" if Path(path).is_dir() else "")
        )
    clock = chunks[0].clock
    for c in chunks[1:]:
        clock = merge_clocks(clock, c.clock)
    arrays = {
        k: np.concatenate([getattr(c, k) for c in chunks]) for k in LOG_FIELDS if getattr(chunks[0], k) is not None
    }
    extra = {k: np.concatenate([c.extra[k] for c in chunks]) for k in chunks[0].extra}
    return Log(
        np.concatenate([c.t_s for c in chunks]),
        np.concatenate([c.step_ok for c in chunks]),
        clock,
        **arrays,
        extra=extra,
        source=str(path),
        notes=tuple(notes),
    )
