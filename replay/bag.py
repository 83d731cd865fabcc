"""rosbag2 bags in MCAP storage, written and read without ROS 2 installed.

A bag is what `ros2 bag record -s mcap` writes: a folder with `metadata.yaml` (rosbag2 format 9) and
`<folder>_0.mcap` (profile `ros2`, `ros2msg` schemas, CDR messages), so `ros2 bag`, Foxglove and the
`rosbags` library read ours and we read theirs. Message definitions come from the `.msg` files of the
installed ROS message packages; decoding uses the definition stored in the bag, so bags from other
stacks decode without their packages (std_msgs/Float64MultiArray, the bulk of a replay, has a fast
decoder of its own for little-endian CDR, the generic one doing the rest).

A closed bag is read through its summary's chunk and message indexes: only the chunks holding a
wanted topic, and in them only that topic's records. A recorder killed mid-write leaves its complete
chunks on disk (small chunks, flushed at least every `flush_period_s`); the reader then reads records
in order and stops at the first incomplete one.
"""

from __future__ import annotations

import bisect
import functools
import io
import json
import math
import operator
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lz4.frame
import numpy as np
import yaml
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, ChunkIndex, Message, Metadata, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType, Writer
from mcap_ros2._dynamic import serialize_dynamic  # the encoder mcap_ros2.writer uses; no public factory
from mcap_ros2.decoder import DecoderFactory

MCAP_MAGIC = b"\x89MCAP0\r\n"
ROSBAG2_VERSION = 9  # metadata.yaml format of Jazzy and later (QoS as a list of dicts)
CUSTOM_DATA_RECORD = "s2r"  # MCAP metadata record holding the bag's custom data, written at open
SEPARATOR = "=" * 80  # between concatenated message definitions, as rosbag2 writes them
PRIMITIVES = frozenset(
    "bool byte char float32 float64 int8 uint8 int16 uint16 int32 uint32 int64 uint64 string wstring".split()
)
_INFINITE = {"sec": 9223372036, "nsec": 854775807}  # rosbag2's spelling of an infinite QoS duration
DEFAULT_QOS = {  # offered QoS recorded for a topic whose publishers were not asked: a default publisher
    "history": "keep_last",
    "depth": 10,
    "reliability": "reliable",
    "durability": "volatile",
    "deadline": _INFINITE,
    "lifespan": _INFINITE,
    "liveliness": "automatic",
    "liveliness_lease_duration": _INFINITE,
    "avoid_ros_namespace_conventions": False,
}


class BagError(ValueError):
    """The bag cannot be written or read as asked: a missing topic, a file that is not a bag, a bad type."""


# --- message definitions -------------------------------------------------------------------------
def _split_type(msgtype: str) -> tuple[str, str]:
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise BagError(f"message type '{msgtype}' is not of the form package/msg/Type")
    return parts[0], parts[2]


def _share_dirs() -> list[Path]:
    """Where ROS packages install their interface files: this Python's prefix (the ROS wheels), then
    every prefix of a sourced ROS 2 install."""
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [Path(p) / "share" for p in prefixes]


def _interface_file(msgtype: str, suffix: str) -> Path | None:
    pkg, name = _split_type(msgtype)
    return next((f for d in _share_dirs() if (f := d / pkg / "msg" / f"{name}{suffix}").is_file()), None)


def _dependencies(text: str, pkg: str) -> list[str]:
    """The complex field types of one .msg text, as package/msg/Type, in order of appearance."""
    deps = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        base = line.split()[0].split("[", 1)[0].split("<=", 1)[0]  # float64[3], string<=8
        if base in PRIMITIVES:  # constants (NAME=value) are always primitive
            continue
        if base == "Header":
            dep = "std_msgs/msg/Header"
        elif "/" in base:
            p, _, t = base.partition("/")
            dep = f"{p}/msg/{t.rsplit('/', 1)[-1]}"
        else:
            dep = f"{pkg}/msg/{base}"
        if dep not in deps:
            deps.append(dep)
    return deps


@functools.cache
def message_definition(msgtype: str) -> str:
    """The full ros2msg definition of `msgtype` as rosbag2 stores it: its .msg text, then each type it
    depends on (recursively, once) after a separator line and a `MSG: pkg/Type` header."""
    texts: dict[str, str] = {}
    pending = [msgtype]
    while pending:
        t = pending.pop(0)
        if t in texts:
            continue
        f = _interface_file(t, ".msg")
        if f is None:
            where = ", ".join(str(d) for d in _share_dirs())
            needed = "" if t == msgtype else f" (needed by {msgtype})"
            raise BagError(
                f"no message definition for {t}{needed}: no {t}.msg under {where}; install its ROS message package"
            )
        texts[t] = f.read_text()
        pending += [d for d in _dependencies(texts[t], _split_type(t)[0]) if d not in texts]
    main, *deps = texts
    parts = [texts[main]]
    for dep in deps:
        pkg, name = _split_type(dep)
        parts.append(f"\n{SEPARATOR}\nMSG: {pkg}/{name}\n{texts[dep]}")
    return "".join(parts)


@functools.cache
def type_description_hash(msgtype: str) -> str:
    """RIHS01 hash of the type from its installed .json description; '' when the package ships none."""
    f = _interface_file(msgtype, ".json")
    if f is None:
        return ""
    hashes = json.loads(f.read_text()).get("type_hashes", [])
    return next((h["hash_string"] for h in hashes if h.get("type_name") == msgtype), "")


# --- writing -------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Plain YAML for other readers (yaml-cpp in rosbag2): no anchors for repeated values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _yaml_text(info: dict) -> str:
    return yaml.dump({"rosbag2_bagfile_information": info}, Dumper=_Dumper, sort_keys=False)


@dataclass
class _Topic:
    channel_id: int
    msgtype: str
    offered_qos: list[dict]
    count: int = 0


class BagWriter:
    """Writes one rosbag2 bag (MCAP storage) into a new folder `path`; `metadata` (str -> str) is the
    bag's custom data: in metadata.yaml's `custom_data` and in an MCAP metadata record written at open.

    Use as a context manager or call `close()`: only a closed bag has its summary, index and final
    metadata.yaml; a killed one still reads up to its last flushed chunk."""

    def __init__(
        self,
        path: str | Path,
        metadata: Mapping[str, str] | None = None,
        *,
        chunk_size: int = 256 * 1024,
        flush_period_s: float = 0.5,
    ):
        self.path = Path(path)
        self.custom_data = dict(metadata or {})
        bad = [k for k, v in self.custom_data.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise BagError(f"bag metadata must map str to str (rosbag2 custom_data); not so for keys {bad}")
        if self.path.exists():
            raise BagError(f"bag folder {self.path} already exists: refusing to overwrite it")
        self.path.mkdir(parents=True)
        self.mcap_path = self.path / f"{self.path.name}_0.mcap"
        self.flush_period_s = flush_period_s
        self._file = open(self.mcap_path, "wb")
        self._writer = Writer(self._file, chunk_size=chunk_size, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="s2r replay.bag")
        self._writer.add_metadata(CUSTOM_DATA_RECORD, self.custom_data)
        self._topics: dict[str, _Topic] = {}
        self._schemas: dict[str, int] = {}
        self._encoders: dict[str, Any] = {}
        self._start_ns: int | None = None
        self._end_ns = 0
        self._last_flush = time.monotonic()
        self.closed = False
        self.flush()  # header and custom data on disk, and a metadata.yaml that marks the folder as a bag

    def add_topic(self, topic: str, msgtype: str, offered_qos: list[dict] | None = None) -> None:
        """Registers `topic` (done by the first `write` otherwise) with its publishers' offered QoS in
        rosbag2's form (`DEFAULT_QOS` keys); the definition of `msgtype` must be installed."""
        if topic in self._topics:
            if self._topics[topic].msgtype != msgtype:
                raise BagError(f"topic {topic} is {self._topics[topic].msgtype} in this bag, not {msgtype}")
            return
        if msgtype not in self._schemas:
            self._schemas[msgtype] = self._writer.register_schema(
                msgtype, "ros2msg", message_definition(msgtype).encode()
            )
        qos = list(offered_qos) if offered_qos else [DEFAULT_QOS]
        channel_id = self._writer.register_channel(
            topic,
            "cdr",
            self._schemas[msgtype],
            {
                "offered_qos_profiles": yaml.dump(qos, Dumper=_Dumper, sort_keys=False),
                "topic_type_hash": type_description_hash(msgtype),
            },
        )
        self._topics[topic] = _Topic(channel_id, msgtype, qos)

    def write(self, topic: str, msgtype: str, cdr: bytes, log_time_ns: int) -> None:
        """One already serialized message (CDR, as a raw subscription receives it) at its receive time."""
        if topic not in self._topics or self._topics[topic].msgtype != msgtype:
            self.add_topic(topic, msgtype)
        t = self._topics[topic]
        self._writer.add_message(
            t.channel_id, log_time=log_time_ns, data=bytes(cdr), publish_time=log_time_ns, sequence=t.count
        )
        t.count += 1
        self._start_ns = log_time_ns if self._start_ns is None else min(self._start_ns, log_time_ns)
        self._end_ns = max(self._end_ns, log_time_ns)
        if time.monotonic() - self._last_flush > self.flush_period_s:
            self.flush()

    def write_msg(self, topic: str, msgtype: str, msg: Any, log_time_ns: int) -> None:
        """Serializes `msg` (a dict or any object with the message's fields, e.g. a ROS message) and writes it."""
        if msgtype not in self._encoders:
            self._encoders[msgtype] = serialize_dynamic(msgtype, message_definition(msgtype))[msgtype]
        try:
            data = self._encoders[msgtype](msg)
        except (AttributeError, KeyError, TypeError, ValueError, struct.error) as e:
            raise BagError(f"cannot serialize a {msgtype} for {topic}: {type(e).__name__}: {e}") from e
        self.write(topic, msgtype, data, log_time_ns)

    def flush(self) -> None:
        """Closes the chunk in progress and hands everything to the OS: a kill after this loses nothing."""
        self._writer.flush()
        self._file.flush()
        if not (self.path / "metadata.yaml").exists():
            _write_atomic(self.path / "metadata.yaml", _yaml_text(self._metadata_info()))
        self._last_flush = time.monotonic()

    @property
    def counts(self) -> dict[str, int]:
        """Messages written per topic."""
        return {name: t.count for name, t in self._topics.items()}

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self._topics.values())

    def _metadata_info(self) -> dict:
        count, start = self.message_count, self._start_ns or 0
        duration = self._end_ns - start if count else 0
        info = {
            "version": ROSBAG2_VERSION,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": duration},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": count,
            "topics_with_message_count": [
                {
                    "topic_metadata": {
                        "name": name,
                        "type": t.msgtype,
                        "serialization_format": "cdr",
                        "offered_qos_profiles": t.offered_qos,
                        "type_description_hash": type_description_hash(t.msgtype),
                    },
                    "message_count": t.count,
                }
                for name, t in self._topics.items()
            ],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [self.mcap_path.name],
            "files": [
                {
                    "path": self.mcap_path.name,
                    "starting_time": {"nanoseconds_since_epoch": start},
                    "duration": {"nanoseconds": duration},
                    "message_count": count,
                }
            ],
            "custom_data": self.custom_data,
            "ros_distro": os.environ.get("ROS_DISTRO", ""),
        }
        return info

    def close(self) -> None:
        """Writes the summary and index, then metadata.yaml with the final counts (atomically)."""
        if self.closed:
            return
        self.closed = True
        info = self._metadata_info()
        # rosbag2's MCAP storage keeps a copy of metadata.yaml's content inside the file too
        inner = yaml.dump(info, Dumper=_Dumper, sort_keys=False)
        self._writer.add_metadata("rosbag2", {"serialized_metadata": inner, "ROS_DISTRO": info["ros_distro"]})
        self._writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        _write_atomic(self.path / "metadata.yaml", _yaml_text(info))

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- reading -------------------------------------------------------------------------------------
class TopicInfo(NamedTuple):
    msgtype: str
    count: int


class BagMessage(NamedTuple):
    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any  # decoded from the schema stored in the bag: attributes named as the message's fields


# --- fast decoders ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MultiArrayDimension:
    label: str
    size: int
    stride: int


@dataclass(frozen=True, slots=True)
class MultiArrayLayout:
    dim: tuple[MultiArrayDimension, ...]
    data_offset: int


@dataclass(slots=True)
class Float64MultiArray:
    layout: MultiArrayLayout  # shared by the messages of a stream that repeat it (frozen, so safe)
    data: np.ndarray  # (n,) float64, a read-only view of the message bytes


_U32, _U32x2 = struct.Struct("<I").unpack_from, struct.Struct("<II").unpack_from
CDR_LE = 1  # encapsulation kind of plain little-endian CDR (byte 1 of the 4-byte header)


def _align(pos: int, n: int) -> int:
    """`pos` rounded up to a multiple of `n` counted from the payload start (after the 4-byte header)."""
    return pos + (-(pos - 4) % n)


def float64_multiarray_head(cdr: bytes) -> tuple[MultiArrayLayout, int, int] | None:
    """(layout, byte offset of the float64 data, its count) of a std_msgs/msg/Float64MultiArray in plain
    little-endian CDR; None for any other encapsulation (big-endian, parameter lists, XCDR2)."""
    if len(cdr) < 4 or cdr[1] != CDR_LE:
        return None
    (n_dims,) = _U32(cdr, 4)
    pos, dims = 8, []
    for _ in range(n_dims):
        pos = _align(pos, 4)
        (length,) = _U32(cdr, pos)  # counts the terminating NUL; 0 or 1 for an empty label
        label = cdr[pos + 4 : pos + 3 + length].decode() if length > 1 else ""
        pos = _align(pos + 4 + length, 4)
        dims.append(MultiArrayDimension(label, *_U32x2(cdr, pos)))
        pos += 8
    pos = _align(pos, 4)
    data_offset, count = _U32x2(cdr, pos)
    return MultiArrayLayout(tuple(dims), data_offset), _align(pos + 8, 8) if count else pos + 8, count


_F8 = np.dtype("<f8")


class Float64MultiArrayDecoder:
    """One channel's std_msgs/msg/Float64MultiArray: from little-endian CDR the data is taken in one
    `np.frombuffer` (the generic decoder unpacks it float by float) and the layout parsed again only when
    the bytes before the data change (policy_io repeats them every message); any other encapsulation
    goes to `fallback`, the generic decoder (a list for `data`)."""

    def __init__(self, fallback: Callable[[bytes], Any]) -> None:
        self.fallback = fallback
        self._head = b""
        self._start = self._count = 0
        self._layout = MultiArrayLayout((), 0)

    def __call__(self, cdr: bytes) -> Any:
        if not self._head or not cdr.startswith(self._head):
            head = float64_multiarray_head(cdr)
            if head is None:
                return self.fallback(cdr)
            self._layout, self._start, self._count = head
            self._head = bytes(cdr[: self._start])
        return Float64MultiArray(self._layout, np.frombuffer(cdr, _F8, self._count, self._start))


# message type -> its fast decoder for one channel, made from the generic decoder it falls back on
FAST_DECODERS: dict[str, Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]]] = {
    "std_msgs/msg/Float64MultiArray": Float64MultiArrayDecoder,
}


# what reading a file cut inside a record raises: too few bytes (EndOfFile, struct.error), or bytes
# of a cut record read as something else (a bad opcode, length, string or CRC)
_TRUNCATED = (McapError, struct.error, ValueError)


@dataclass
class _File:
    path: Path
    complete: bool  # closed by its writer: summary present
    chunk_indexes: list[ChunkIndex] | None  # the summary's, when every chunk has its message index: read by it
    schemas: dict[int, Schema]
    channels: dict[int, Channel]
    counts: dict[int, int]
    custom_data: dict[str, str]
    end_offset: int  # end of the last complete record
    note: str = ""

    def add(self, record) -> None:
        if isinstance(record, Schema):
            self.schemas[record.id] = record
        elif isinstance(record, Channel):
            self.channels[record.id] = record
        elif isinstance(record, Message):
            self.counts[record.channel_id] = self.counts.get(record.channel_id, 0) + 1
        elif isinstance(record, Metadata) and record.name == CUSTOM_DATA_RECORD:
            self.custom_data.update(record.metadata)


class BagReader:
    """Reads a rosbag2 bag in MCAP storage (the folder or its .mcap file), complete or cut short.

    `topics` maps each topic to (type, message count); `metadata` is the bag's custom data;
    `messages(topics)` streams `BagMessage`s in log-time order, one chunk in memory at a time;
    `notes` says what was recovered from a bag whose writer did not close it."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise BagError(f"no bag at {path}")
        custom_data: dict[str, str] = {}
        if path.is_dir():
            files, custom_data = self._bag_files(path)
        else:
            files = [path]
        self.path = path
        self._files = [self._open(f) for f in files]
        self.metadata: dict[str, str] = dict(custom_data)
        for f in self._files:
            self.metadata.update(f.custom_data)
        self.notes = [f.note for f in self._files if f.note]
        topics: dict[str, TopicInfo] = {}
        for f in self._files:
            for cid, ch in f.channels.items():
                msgtype = f.schemas[ch.schema_id].name if ch.schema_id in f.schemas else ""
                prev = topics.get(ch.topic, TopicInfo(msgtype, 0))
                topics[ch.topic] = TopicInfo(prev.msgtype, prev.count + f.counts.get(cid, 0))
        self.topics = topics
        if not self.complete and self.message_count == 0:  # nothing to recover: say so, not "topic not in bag"
            raise BagError(
                ", ".join(
                    f"{f.path.name} is truncated after {os.path.getsize(f.path)} bytes"
                    for f in self._files
                    if not f.complete
                )
                + ": no complete message (its writer did not close it)"
            )
        self._decoders = DecoderFactory()

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def complete(self) -> bool:
        """Every file was closed by its writer (has its summary and index)."""
        return all(f.complete for f in self._files)

    def missing_topic(self, topic: str, why: str = "") -> str:
        """What to say of a topic the bag lacks: the topics it has, and where it was cut short if it was."""
        return f"topic {topic} is not in bag {self.path}{f' ({why})' if why else ''}; it has {sorted(self.topics)}" + (
            "" if self.complete else f"; it was cut short: {'; '.join(self.notes)}"
        )

    @staticmethod
    def _bag_files(folder: Path) -> tuple[list[Path], dict[str, str]]:
        """The .mcap files of a bag folder, by metadata.yaml when it names existing ones, else all of them
        (a stale or missing metadata.yaml is what a killed recorder leaves)."""
        meta = folder / "metadata.yaml"
        info: dict = {}
        if meta.is_file():
            try:
                doc = yaml.safe_load(meta.read_text())
            except yaml.YAMLError as e:
                raise BagError(f"{meta} is not a rosbag2 metadata file: {e}") from e
            found = doc.get("rosbag2_bagfile_information") if isinstance(doc, dict) else None
            if not isinstance(found, dict):
                raise BagError(f"{meta} is not a rosbag2 metadata file: no rosbag2_bagfile_information mapping")
            info = found
            if info.get("storage_identifier", "mcap") != "mcap":
                raise BagError(
                    f"{folder} is a rosbag2 bag in '{info['storage_identifier']}' storage; only mcap is read"
                )
        named = [folder / Path(p).name for p in info.get("relative_file_paths") or []]
        files = named if named and all(f.is_file() for f in named) else sorted(folder.glob("*.mcap"))
        if not files:
            raise BagError(f"{folder} holds no .mcap file: not a rosbag2 bag in MCAP storage")
        return files, dict(info.get("custom_data") or {})

    @staticmethod
    def _open(path: Path) -> _File:
        with open(path, "rb") as f:
            head = f.read(len(MCAP_MAGIC))
            if not MCAP_MAGIC.startswith(head):  # a file cut inside the magic is a truncated bag
                raise BagError(f"{path} is not an MCAP file (it does not start with the MCAP magic bytes)")
            f.seek(0)
            try:
                reader = SeekingReader(f)
                summary = reader.get_summary()
                custom = {}
                for m in reader.iter_metadata():
                    if m.name == CUSTOM_DATA_RECORD:
                        custom.update(m.metadata)
            except (*_TRUNCATED, OSError):  # OSError: a file shorter than the footer it seeks back to
                summary = None
            if summary is not None and summary.statistics is not None:
                chunks = summary.chunk_indexes
                usable = all(c.message_index_offsets for c in chunks) and (
                    chunks or not summary.statistics.message_count
                )
                return _File(
                    path,
                    True,
                    chunks if usable else None,
                    dict(summary.schemas),
                    dict(summary.channels),
                    dict(summary.statistics.channel_message_counts),
                    custom,
                    os.path.getsize(path),
                )
            return BagReader._scan(path, f)

    @staticmethod
    def _scan(path: Path, f: io.BufferedReader) -> _File:
        """One pass over the records of a file without a usable summary, up to the first incomplete one."""
        out = _File(path, False, None, {}, {}, {}, {}, len(MCAP_MAGIC))
        f.seek(0)
        size = os.path.getsize(path)
        stream = StreamReader(f, emit_chunks=True, record_size_limit=size)
        try:
            for record in stream.records:
                for r in breakup_chunk(record) if isinstance(record, Chunk) else [record]:
                    out.add(r)
                out.end_offset = f.tell()  # only after the whole record was read and decoded
        except _TRUNCATED:
            messages = sum(out.counts.values())
            where = (
                f"after its last complete record (byte {size})"
                if out.end_offset == size
                else f"inside a record (bytes {out.end_offset}..{size})"
            )
            out.note = (
                f"{path.name} ends {where} without its summary, its writer did not close it: "
                f"{messages} complete messages recovered"
            )
        return out

    def _resolve(self, topics: Iterable[str] | None) -> set[str] | None:
        if topics is None:
            return None
        if isinstance(topics, str):
            topics = [topics]
        wanted = set()
        for t in topics:
            name = t if t in self.topics else f"/{t}" if f"/{t}" in self.topics else None
            if name is None:
                raise BagError(self.missing_topic(t))
            wanted.add(name)
        return wanted

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Decoded messages of `topics` (all when None; a name without its leading '/' matches too),
        in log-time order (within each chunk for a file cut short; file after file for a split bag)."""
        wanted = self._resolve(topics)
        for f in self._files:
            ids = None if wanted is None else {cid for cid, ch in f.channels.items() if ch.topic in wanted}
            streams: dict[int, tuple[str, str, Callable[[bytes], Any]]] = {}  # channel -> topic, type, decoder
            records = self._indexed_records(f, ids) if f.chunk_indexes is not None else self._sequential_records(f, ids)
            for log_time, _, channel_id, data in records:
                if channel_id not in streams:
                    channel = f.channels[channel_id]
                    decode = self._decoder(f, channel)
                    streams[channel_id] = (channel.topic, f.schemas[channel.schema_id].name, decode)
                topic, msgtype, decode = streams[channel_id]
                yield BagMessage(topic, msgtype, log_time, decode(data))

    def _decoder(self, f: _File, channel: Channel) -> Callable[[bytes], Any]:
        """The generic decoder of the channel's stored schema, behind the fast one of its type if any."""
        schema = f.schemas.get(channel.schema_id)
        generic = self._decoders.decoder_for(channel.message_encoding, schema)
        if generic is None or schema is None:  # no schema gives no generic decoder
            raise BagError(
                f"topic {channel.topic}: cannot decode encoding '{channel.message_encoding}' with "
                f"schema encoding '{schema.encoding if schema else None}' (only cdr + ros2msg)"
            )
        return FAST_DECODERS[schema.name](generic) if schema.name in FAST_DECODERS else generic

    @staticmethod
    def _indexed_records(f: _File, ids: set[int] | None) -> Iterator[tuple[int, int, int, bytes]]:
        """(log time, order, channel id, CDR) of the wanted channels by the summary's chunk and message
        indexes: chunks without a wanted channel are not read, nor other channels' records in the rest;
        chunks overlapping in time are merged."""
        assert f.chunk_indexes is not None  # called only for files read by their indexes
        chunks = sorted(
            (c for c in f.chunk_indexes if ids is None or ids & c.message_index_offsets.keys()),
            key=lambda c: (c.message_start_time, c.chunk_start_offset),
        )
        pending: list[tuple[int, int, int, bytes]] = []  # read, sorted, not yet yielded
        order = 0
        with open(f.path, "rb") as stream:
            for c, after in zip(chunks, [c.message_start_time for c in chunks[1:]] + [math.inf], strict=True):
                index = _message_index(stream, c, ids)
                stream.seek(c.chunk_start_offset + 9)  # past the chunk record's opcode and length
                channel_ids, data = _messages_at(_chunk_records(Chunk.read(ReadDataStream(stream))), index[:, 1])
                new = list(zip(index[:, 0].tolist(), range(order, order + len(data)), channel_ids, data, strict=True))
                order += len(data)
                pending = sorted(pending + new) if pending or not _is_sorted(index[:, 0]) else new
                # what is not later than the next chunk's first message cannot be preceded by anything unread
                cut = bisect.bisect_right(pending, after, key=operator.itemgetter(0))
                yield from pending[:cut]
                pending = pending[cut:]

    @staticmethod
    def _sequential_records(f: _File, ids: set[int] | None) -> Iterator[tuple[int, int, int, bytes]]:
        """(log time, order, channel id, CDR) of the wanted channels record after record, up to where the
        scan found the file stops being readable; log-time order within each chunk."""
        with open(f.path, "rb") as stream:
            # no record is longer than the readable part: a length read from a cut is garbage
            records = StreamReader(stream, emit_chunks=True, record_size_limit=f.end_offset).records
            while True:
                try:
                    record = next(records)
                except (StopIteration, *_TRUNCATED):
                    return
                batch = breakup_chunk(record) if isinstance(record, Chunk) else [record]
                msgs = [
                    (r.log_time, i, r.channel_id, r.data)
                    for i, r in enumerate(batch)
                    if isinstance(r, Message) and (ids is None or r.channel_id in ids)
                ]
                yield from sorted(msgs)


def find_topic(reader: BagReader, topic: str) -> str | None:
    """The bag's name for `topic`, with or without the leading slash; None if it is not there."""
    return next((name for name in ("/" + topic.lstrip("/"), topic.lstrip("/")) if name in reader.topics), None)


def _message_index(stream: io.BufferedReader, chunk: ChunkIndex, ids: set[int] | None) -> np.ndarray:
    """(n, 2) uint64 [log time, offset in the uncompressed records] of the wanted channels' messages in
    one chunk, from its message index records, in record order."""
    parts = []
    for cid, offset in chunk.message_index_offsets.items():
        if ids is not None and cid not in ids:
            continue
        stream.seek(offset + 1 + 8 + 2)  # opcode, record length, channel id
        (length,) = _U32(stream.read(4))
        parts.append(np.frombuffer(stream.read(length), "<u8").reshape(-1, 2))
    entries = np.concatenate(parts) if parts else np.zeros((0, 2), np.uint64)
    return entries[np.argsort(entries[:, 1], kind="stable")]


def _is_sorted(x: np.ndarray) -> bool:
    return bool((x[1:] >= x[:-1]).all())


def _chunk_records(chunk: Chunk) -> bytes:
    """The uncompressed records of a chunk."""
    if chunk.compression == "zstd":
        return zstandard.decompress(chunk.data, chunk.uncompressed_size)
    if chunk.compression == "lz4":
        return lz4.frame.decompress(chunk.data)
    if chunk.compression == "":
        return chunk.data
    raise BagError(f"chunk compression '{chunk.compression}' is not supported (zstd, lz4 or none)")


_MESSAGE_PREFIX = 1 + 8 + 2 + 4 + 8 + 8  # opcode, length, channel id, sequence, log and publish time


def _messages_at(records: bytes, offsets: np.ndarray) -> tuple[list[int], list[bytes]]:
    """(channel ids, CDR payloads) of the message records at `offsets` of a chunk's records, their
    headers read in one gather."""
    raw = np.frombuffer(records, np.uint8)
    offsets = offsets.astype(np.int64)
    if len(offsets) and (offsets.max() + _MESSAGE_PREFIX > len(raw) or (raw[offsets] != Opcode.MESSAGE).any()):
        raise BagError("a message index points past its chunk or at a record that is not a message: corrupt index")
    head = raw[offsets[:, None] + np.arange(1, 11)]  # record length (u64), channel id (u16)
    ends = (offsets + 9 + head[:, :8].copy().view("<u8")[:, 0].astype(np.int64)).tolist()
    channel_ids = head[:, 8:].copy().view("<u2")[:, 0].tolist()
    return channel_ids, [records[a:b] for a, b in zip((offsets + _MESSAGE_PREFIX).tolist(), ends, strict=True)]


# --- helpers for replay --------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamHealth:
    """How regular one stream's timestamps are; counted, not raised, as real logs have both."""

    messages: int
    backward_jumps: int  # a time earlier than the one before it (a clock stepped back, reordering)
    gaps: int  # steps longer than `gap_periods` periods (dropped messages, a stalled driver)
    max_gap_s: float
    span_s: float


class StreamHealthCounter:
    """`stream_health` fed in parts, for streams read interleaved from one bag or block by block."""

    def __init__(self, period_s: float, gap_periods: float = 3.0):
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.gap_ns = gap_periods * period_s * 1e9
        self.n = self.back = self.gaps = self.max_gap_ns = 0
        self.first = self.prev = None

    def add(self, t_ns: int | np.ndarray) -> None:
        """One timestamp or an array of them, in stream order."""
        t = np.atleast_1d(np.asarray(t_ns, dtype=np.int64))
        if not len(t):
            return
        if self.prev is None:
            self.first = self.prev = int(t[0])
        step = np.diff(t, prepend=np.int64(self.prev))
        forward = step[step >= 0]
        self.n += len(t)
        self.back += int((step < 0).sum())
        self.gaps += int((forward > self.gap_ns).sum())
        self.max_gap_ns = max(self.max_gap_ns, int(forward.max(initial=0)))
        self.prev = int(t[-1])

    def result(self) -> StreamHealth:
        if self.n == 0:
            span = 0.0
        else:
            assert self.first is not None and self.prev is not None  # set by the first add
            span = (self.prev - self.first) / 1e9
        return StreamHealth(self.n, self.back, self.gaps, self.max_gap_ns / 1e9, span)


def stream_health(times_ns: Iterable[int], period_s: float, gap_periods: float = 3.0) -> StreamHealth:
    """Counts clock jumps and gaps in a stream expected every `period_s`, in one pass over `times_ns`."""
    counter = StreamHealthCounter(period_s, gap_periods)
    counter.add(np.fromiter(times_ns, dtype=np.int64))
    return counter.result()


def policy_io_segments(layout: Any) -> dict[str, slice]:
    """A `policy_io` Float64MultiArray's layout -> {obs, action, command, timing: where in `data`}: each
    layout dimension names a segment, its size and (in `stride`) its start offset
    (s2r_ros.messages.policy_io_msg)."""
    return {d.label: slice(d.stride, d.stride + d.size) for d in layout.dim}


def policy_io_fields(msg: Any) -> dict[str, np.ndarray]:
    """A logged `policy_io` Float64MultiArray -> {obs, action, command, timing}."""
    data = np.asarray(msg.data, dtype=np.float64)
    return {label: data[sl] for label, sl in policy_io_segments(msg.layout).items()}
