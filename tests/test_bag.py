"""rosbag2 bags in MCAP storage (replay/bag.py): round trips, the independent `rosbags` library as reader
and writer, bags cut short, errors; and the recorder node as a real process over DDS, closed cleanly
and killed mid-recording."""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import SeekingReader
from mcap.records import Chunk, Message
from mcap.stream_reader import StreamReader, breakup_chunk

from replay.bag import (
    BagError,
    BagReader,
    BagWriter,
    Float64MultiArrayDecoder,
    StreamHealthCounter,
    message_definition,
    policy_io_fields,
    stream_health,
)

JS, ARRAY, ODOM = "sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray", "nav_msgs/msg/Odometry"


def joint_state(i: int) -> dict:
    return {
        "header": {"stamp": {"sec": i, "nanosec": 7 * i}, "frame_id": "base"},
        "name": ["hip", "knee"],
        "position": [0.1 * i, -0.2 * i],
        "velocity": [1.5, -2.5 + i],
        "effort": [],
    }


def policy_io(i: int) -> dict:
    segments = [("obs", 3), ("action", 2), ("command", 2), ("timing", 4)]
    dims, offset = [], 0
    for label, size in segments:
        dims.append({"label": label, "size": size, "stride": offset})
        offset += size
    return {"layout": {"dim": dims, "data_offset": 0}, "data": [float(i + k) / 3 for k in range(offset)]}


def odometry(i: int) -> dict:
    cov = [float(k) for k in range(36)]
    return {
        "header": {"stamp": {"sec": 100 + i, "nanosec": 0}, "frame_id": "world"},
        "child_frame_id": "base",
        "pose": {
            "pose": {
                "position": {"x": 1.0 * i, "y": 2.0, "z": 0.3},
                "orientation": {"x": 0.0, "y": 0.0, "z": 0.6, "w": 0.8},
            },
            "covariance": cov,
        },
        "twist": {
            "twist": {"linear": {"x": 0.5, "y": -0.5, "z": 0.0}, "angular": {"x": 0.0, "y": 0.1, "z": i / 10}},
            "covariance": cov,
        },
    }


MAKERS = {"/joint_states": (JS, joint_state), "/policy_io": (ARRAY, policy_io), "/odom": (ODOM, odometry)}
META = {"policy_spec": '{"robot": "arm", "obs": [1, 2]}', "policy_sha256": "ab" * 32}


def expected_stream(n: int) -> list[tuple[str, int, dict]]:
    """n messages per topic, interleaved, 10 ms apart per topic."""
    out = []
    for i in range(n):
        for k, topic in enumerate(MAKERS):
            out.append((topic, 1_700_000_000_000_000_000 + i * 10_000_000 + k * 1000, MAKERS[topic][1](i)))
    return out


def write_bag(path: Path, n: int = 20, **kw) -> list[tuple[str, int, dict]]:
    stream = expected_stream(n)
    with BagWriter(path, META, **kw) as bag:
        for topic, t, msg in stream:
            bag.write_msg(topic, MAKERS[topic][0], msg, t)
    return stream


def as_plain(msg):
    """A decoded message (ours or rosbags') as dicts and lists, for comparison with what was written."""
    if isinstance(msg, (list, tuple, np.ndarray)):
        return [as_plain(x) for x in msg]
    if isinstance(msg, (bool, int, float, str)):
        return msg
    fields = getattr(msg, "__slots__", None) or [k for k in vars(msg) if not k.startswith("_")]
    return {k: as_plain(getattr(msg, k)) for k in fields if k != "__msgtype__"}


def subset_equal(written, read) -> bool:
    """Every field written equals the one read (readers add defaulted fields we did not set)."""
    if isinstance(written, dict):
        return all(subset_equal(v, read[k]) for k, v in written.items())
    if isinstance(written, list):
        return len(written) == len(read) and all(subset_equal(a, b) for a, b in zip(written, read, strict=True))
    return written == read


def test_round_trip_values_order_topics_and_metadata(tmp_path):
    stream = write_bag(tmp_path / "bag")
    for path in (tmp_path / "bag", tmp_path / "bag" / "bag_0.mcap"):
        reader = BagReader(path)
        assert reader.complete and not reader.notes
        assert reader.metadata == META
        assert reader.topics == {t: (MAKERS[t][0], 20) for t in MAKERS}
        got = list(reader.messages())
        assert [(m.topic, m.log_time_ns) for m in got] == [(t, ns) for t, ns, _ in stream]
        for m, (topic, _, msg) in zip(got, stream, strict=True):
            assert m.msgtype == MAKERS[topic][0]
            assert subset_equal(msg, as_plain(m.msg)), topic
    # one topic, named with or without its leading slash; policy_io's segments by label
    io = list(BagReader(tmp_path / "bag").messages(["policy_io"]))
    assert len(io) == 20 and {m.topic for m in io} == {"/policy_io"}
    fields = policy_io_fields(io[3].msg)
    assert list(fields) == ["obs", "action", "command", "timing"]
    np.testing.assert_array_equal(fields["action"], [(3 + 3) / 3, (3 + 4) / 3])


def test_raw_cdr_write_and_log_time_order(tmp_path):
    """write() takes bytes as a raw subscription gets them; out-of-order receive times come back sorted."""
    with BagWriter(tmp_path / "src", {}) as src:
        for i in range(5):
            src.write_msg("/a", JS, joint_state(i), 1000 + i)
    with open(tmp_path / "src" / "src_0.mcap", "rb") as f:
        cdr = [msg.data for _, _, msg in SeekingReader(f).iter_messages()]
    with BagWriter(tmp_path / "dst", {}) as dst:
        for t, data in zip([5, 3, 4, 1, 2], cdr, strict=True):
            dst.write("/a", JS, data, t)
    got = list(BagReader(tmp_path / "dst").messages())
    assert [m.log_time_ns for m in got] == [1, 2, 3, 4, 5]
    assert [m.msg.header.stamp.sec for m in got] == [3, 4, 1, 2, 0]


def test_metadata_yaml_is_rosbag2_and_rosbags_reads_our_bag(tmp_path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    stream = write_bag(tmp_path / "bag")
    info = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["storage_identifier"] == "mcap" and info["message_count"] == 60
    assert info["relative_file_paths"] == ["bag_0.mcap"] and info["custom_data"] == META
    assert info["starting_time"]["nanoseconds_since_epoch"] == stream[0][1]
    assert info["duration"]["nanoseconds"] == stream[-1][1] - stream[0][1]
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert topics["/joint_states"]["topic_metadata"]["type_description_hash"].startswith("RIHS01_")
    assert all(
        t["topic_metadata"]["serialization_format"] == "cdr" and t["message_count"] == 20 for t in topics.values()
    )

    store = get_typestore(Stores.ROS2_JAZZY)
    with Reader(tmp_path / "bag") as reader:
        assert reader.message_count == 60
        assert reader.storage.metadata.custom == META
        assert {c.topic: c.msgtype for c in reader.connections} == {t: MAKERS[t][0] for t in MAKERS}
        assert {c.digest for c in reader.connections if c.topic == "/joint_states"} == {
            topics["/joint_states"]["topic_metadata"]["type_description_hash"]
        }
        got = [(c.topic, t, store.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages()]
    assert [(topic, t) for topic, t, _ in got] == [(topic, t) for topic, t, _ in stream]
    for (_, _, theirs), (topic, _, msg) in zip(got, stream, strict=True):
        assert subset_equal(msg, as_plain(theirs)), topic


def test_bag_written_by_rosbags_reads(tmp_path):
    """The independent writer: rosbags' own rosbag2 writer in MCAP storage."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from rosbags.typesys.stores.ros2_jazzy import (
        builtin_interfaces__msg__Time as Time,
    )
    from rosbags.typesys.stores.ros2_jazzy import (
        sensor_msgs__msg__JointState as JointState,
    )
    from rosbags.typesys.stores.ros2_jazzy import (
        std_msgs__msg__Header as Header,
    )

    store = get_typestore(Stores.ROS2_JAZZY)
    with Writer(tmp_path / "theirs", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        writer.set_custom_data("policy_sha256", "cd" * 32)
        conn = writer.add_connection("/joint_states", JS, typestore=store)
        for i in range(30):
            msg = JointState(
                header=Header(stamp=Time(sec=i, nanosec=1), frame_id="base"),
                name=["a", "b"],
                position=np.array([i, -i], dtype=np.float64),
                velocity=np.array([0.5, 1.5]),
                effort=np.array([], dtype=np.float64),
            )
            writer.write(conn, 1000 + i, store.serialize_cdr(msg, JS))
    reader = BagReader(tmp_path / "theirs")
    assert reader.topics == {"/joint_states": (JS, 30)} and reader.metadata == {"policy_sha256": "cd" * 32}
    got = list(reader.messages(["/joint_states"]))
    assert [m.log_time_ns for m in got] == list(range(1000, 1030))
    assert [list(m.msg.position) for m in got] == [[float(i), float(-i)] for i in range(30)]
    assert got[7].msg.header.stamp.sec == 7 and list(got[7].msg.name) == ["a", "b"]


def test_bag_cut_short_reads_its_complete_chunks(tmp_path):
    """A recorder killed mid-write leaves a file cut anywhere and a stale metadata.yaml: the reader
    returns exactly the messages of the complete chunks, in order, and names the cut; a file cut before
    its first complete message is named as truncated."""
    stream = write_bag(tmp_path / "full", n=200, chunk_size=4096)
    full = tmp_path / "full" / "full_0.mcap"
    with open(full, "rb") as f:
        summary = SeekingReader(f).get_summary()
    chunks = sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset)
    assert len(chunks) > 5
    data = full.read_bytes()
    data_end = chunks[-1].chunk_start_offset + chunks[-1].chunk_length
    stale = yaml.safe_dump(
        {
            "rosbag2_bagfile_information": {
                "version": 9,
                "storage_identifier": "mcap",
                "relative_file_paths": ["cut_0.mcap"],
                "message_count": 0,
                "topics_with_message_count": [],
                "custom_data": META,
            }
        }
    )
    rng = random.Random(0)
    cuts = [
        5,
        40,
        100,
        chunks[0].chunk_start_offset + 10,
        chunks[2].chunk_start_offset,
        data_end - 3,
        data_end + 5,
        len(data) - 1,
    ]
    cuts += [rng.randrange(chunks[0].chunk_start_offset, data_end) for _ in range(6)]
    for cut in cuts:
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        (folder / "metadata.yaml").write_text(stale)
        (folder / "cut_0.mcap").write_bytes(data[:cut])
        complete_messages = sum(_messages_in(data, c) for c in chunks if c.chunk_start_offset + c.chunk_length <= cut)
        if complete_messages == 0:
            with pytest.raises(BagError, match=f"^cut_0.mcap is truncated after {cut} bytes: no complete message"):
                BagReader(folder)
            continue
        reader = BagReader(folder)
        got = list(reader.messages())
        assert not reader.complete and reader.metadata == META, cut
        assert len(got) == complete_messages == reader.message_count, cut
        assert [(m.topic, m.log_time_ns) for m in got] == [(t, ns) for t, ns, _ in stream[: len(got)]], cut
        if got:
            assert subset_equal(stream[len(got) - 1][2], as_plain(got[-1].msg)), cut
        assert f"{complete_messages} complete messages recovered" in reader.notes[0], (cut, reader.notes)
        with pytest.raises(BagError, match="topic /imu is not in bag .*; it was cut short: cut_0.mcap ends "):
            list(reader.messages(["/imu"]))


def _messages_in(data: bytes, chunk_index) -> int:
    start, end = chunk_index.chunk_start_offset, chunk_index.chunk_start_offset + chunk_index.chunk_length
    chunk = next(StreamReader(io.BytesIO(data[start:end]), skip_magic=True, emit_chunks=True).records)
    assert isinstance(chunk, Chunk)
    return sum(isinstance(r, Message) for r in breakup_chunk(chunk))


def _float64_multiarray(labels: list[str], n: int, data_offset: int = 0) -> dict:
    dims = [{"label": label, "size": len(label), "stride": 3 * k} for k, label in enumerate(labels)]
    return {"layout": {"dim": dims, "data_offset": data_offset}, "data": [k * 0.37 - 1e-9 for k in range(n)]}


def _big_endian_cdr(msg: dict) -> bytes:
    """Float64MultiArray in big-endian CDR, which the fast decoder leaves to the generic one."""
    from mcap_ros2._cdr import CdrWriter, EncapsulationKind

    out = io.BytesIO()
    w = CdrWriter(out, kind=EncapsulationKind.CDR_BE)
    w.write_uint32(len(msg["layout"]["dim"]))
    for d in msg["layout"]["dim"]:
        w.write_string(d["label"])
        w.write_uint32(d["size"])
        w.write_uint32(d["stride"])
    w.write_uint32(msg["layout"]["data_offset"])
    w.write_uint32(len(msg["data"]))
    w.write_float64_array(msg["data"])
    return out.getvalue()


def test_fast_float64_multiarray_decoder_matches_the_generic_one(tmp_path):
    """Labels of every length mod 4 and 8 (padding before the float64 data), no dims, no data, a data
    offset; one decoder instance, so a changed layout after a repeated one is parsed again."""
    from mcap_ros2._dynamic import generate_dynamic, serialize_dynamic

    encode = serialize_dynamic(ARRAY, message_definition(ARRAY))[ARRAY]
    generic = generate_dynamic(ARRAY, message_definition(ARRAY))[ARRAY]
    msgs = [_float64_multiarray(["obs"], 5), _float64_multiarray(["obs"], 5)]
    msgs += [_float64_multiarray(["x" * k, "ab"][: 1 + k % 2], n, k) for k in range(10) for n in (0, 1, 7)]
    msgs += [_float64_multiarray([], 3), _float64_multiarray([], 0), policy_io(4)]
    fast = Float64MultiArrayDecoder(generic)
    for msg in msgs + [msgs[0]]:
        cdr = encode(msg)
        got = fast(cdr)
        assert as_plain(got) == as_plain(generic(cdr)) and subset_equal(msg, as_plain(got)), msg
        assert got.data.dtype == np.float64
    big_endian = fast(_big_endian_cdr(msgs[0]))
    assert isinstance(big_endian.data, list) and as_plain(big_endian) == as_plain(fast(encode(msgs[0])))
    # in a bag: the big-endian message decodes through the generic decoder, the others fast
    with BagWriter(tmp_path / "bag", {}) as bag:
        bag.write("/a", ARRAY, encode(msgs[0]), 1)
        bag.write("/a", ARRAY, _big_endian_cdr(msgs[4]), 2)
        bag.write("/a", ARRAY, encode(msgs[4]), 3)
    got = [m.msg for m in BagReader(tmp_path / "bag").messages()]
    assert [as_plain(m) for m in got] == [as_plain(generic(encode(msgs[i]))) for i in (0, 4, 4)]
    assert [isinstance(m.data, np.ndarray) for m in got] == [True, False, True]


def test_index_reads_only_wanted_chunks_in_log_time_order(tmp_path):
    """Chunks overlapping in time (receive times out of order across chunk borders) and a topic kept in
    chunks of its own: the message indexes give what mcap's own reader gives, in its order."""
    rng = random.Random(1)
    with BagWriter(tmp_path / "bag", {}, chunk_size=2048) as bag:
        for i in range(300):
            bag.write_msg("/policy_io", ARRAY, policy_io(i), 50_000 + 10_000 * i + rng.randrange(-40_000, 40_000))
            bag.write_msg("/joint_states", JS, joint_state(i), 50_000 + 10_000 * i + 5)
        bag.flush()  # /odom alone in the last chunks
        for i in range(50):
            bag.write_msg("/odom", ODOM, odometry(i), 100 * i)
    reader = BagReader(tmp_path / "bag")
    with open(tmp_path / "bag" / "bag_0.mcap", "rb") as f:
        mcap = SeekingReader(f)
        assert len(mcap.get_summary().chunk_indexes) > 20
        for topics in (None, ["/policy_io"], ["/odom", "/joint_states"]):
            theirs = [
                (c.topic, m.log_time, m.data) for _, c, m in mcap.iter_messages(topics=topics, log_time_order=True)
            ]
            got = list(reader.messages(topics))
            assert [(m.topic, m.log_time_ns) for m in got] == [(t, ns) for t, ns, _ in theirs], topics
            assert [m.log_time_ns for m in got] == sorted(m.log_time_ns for m in got)
    first = next(iter(reader.messages(["/odom"])))
    assert first.log_time_ns == 0 and first.msg.pose.pose.position.y == 2.0


def test_missing_topic_names_it_and_the_topics_present(tmp_path):
    write_bag(tmp_path / "bag", n=2)
    reader = BagReader(tmp_path / "bag")
    with pytest.raises(BagError, match=r"topic /imu is not in bag .*'/joint_states'.*'/odom'.*'/policy_io'"):
        list(reader.messages(["/joint_states", "/imu"]))


def test_not_a_bag_is_a_named_error(tmp_path):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(5000)))
    with pytest.raises(BagError, match="junk.mcap is not an MCAP file"):
        BagReader(junk)
    (tmp_path / "folder").mkdir()
    shutil.copy(junk, tmp_path / "folder" / "folder_0.mcap")
    with pytest.raises(BagError, match="is not an MCAP file"):
        BagReader(tmp_path / "folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="holds no .mcap file"):
        BagReader(tmp_path / "empty")
    (tmp_path / "folder" / "metadata.yaml").write_text("rosbag2_bagfile_information: no\n")
    with pytest.raises(BagError, match="metadata.yaml is not a rosbag2 metadata file"):
        BagReader(tmp_path / "folder")
    (tmp_path / "notes.txt").write_text("rosbag2_bagfile_information: no\n")
    with pytest.raises(BagError, match="not an MCAP file"):
        BagReader(tmp_path / "notes.txt")
    with pytest.raises(BagError, match="no bag at"):
        BagReader(tmp_path / "missing")


def test_writer_refusals(tmp_path):
    write_bag(tmp_path / "bag", n=1)
    with pytest.raises(BagError, match="bag folder .*bag already exists"):
        BagWriter(tmp_path / "bag", {})
    with pytest.raises(BagError, match=r"keys \['sha'\]"):
        BagWriter(tmp_path / "b2", {"sha": 3})
    with pytest.raises(BagError, match="no message definition for my_msgs/msg/Thing"):
        message_definition("my_msgs/msg/Thing")
    with BagWriter(tmp_path / "b3", {}) as bag:
        bag.write_msg("/x", ARRAY, {"data": [1.0]}, 1)
        with pytest.raises(
            BagError, match="topic /x is std_msgs/msg/Float64MultiArray in this bag, not sensor_msgs/msg/JointState"
        ):
            bag.write_msg("/x", JS, joint_state(0), 2)


def test_message_definition_concatenates_dependencies_once():
    text = message_definition(ODOM)
    sections = text.split("\n" + "=" * 80 + "\n")
    headers = [s.splitlines()[0] for s in sections[1:]]
    assert sections[0].startswith("# This represents an estimate")
    assert len(headers) == len(set(headers)) and {
        "MSG: std_msgs/Header",
        "MSG: builtin_interfaces/Time",
        "MSG: geometry_msgs/Point",
        "MSG: geometry_msgs/Quaternion",
    } <= set(headers)


def test_stream_health_counts_jumps_and_gaps():
    ms = 1_000_000
    times = [0, 10, 20, 30, 25, 35, 45, 100, 110]  # one step back (30 -> 25), one gap of 55 ms at 10 ms period
    health = stream_health((t * ms for t in times), period_s=0.01)
    assert (health.messages, health.backward_jumps, health.gaps) == (9, 1, 1)
    assert health.max_gap_s == pytest.approx(0.055) and health.span_s == pytest.approx(0.11)
    assert stream_health([], 0.01).messages == 0
    for split in ([1, 3, 5], [4], range(1, 9)):  # fed in blocks or one by one: the same counts
        counter = StreamHealthCounter(0.01)
        for part in np.split(np.array(times) * ms, list(split)):
            counter.add(part)
        assert counter.result() == health
    single = StreamHealthCounter(0.01)
    for t in times:
        single.add(t * ms)
    assert single.result() == health


@pytest.mark.slow
def test_recorder_node_records_over_dds_and_survives_kill(tmp_path):
    """The recorder as a real process (as the launch file starts it) records what this test publishes
    over Fast DDS; closed by SIGTERM its bag is complete; killed with SIGKILL it still reads."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node
    from s2r_ros.messages import policy_io_msg
    from s2r_ros.processes import SHIPPED_POLICIES, ros_env, start_node, stop, wait_for
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64MultiArray

    from deploy.onnx_policy import file_sha256, read_spec
    from deploy.spec import PolicySpec

    policy = SHIPPED_POLICIES / "arm.onnx"
    domain = random.randint(1, 200)
    os.environ.update({k: v for k, v in ros_env(domain).items() if k.startswith(("ROS_", "RMW_"))})
    rclpy.init()
    node = Node("test_publisher")
    pubs = {
        "joint_states": node.create_publisher(JointState, "joint_states", 100),
        "policy_io": node.create_publisher(Float64MultiArray, "policy_io", 100),
        "estop": node.create_publisher(Bool, "estop", 10),
    }

    def record(bag: Path, n: int):
        proc = start_node(
            "recorder_node",
            "arm",
            tmp_path,
            domain,
            {
                "bag": str(bag),
                "policy": str(policy),
                "topics": list(pubs),
                "discovery_period_s": 0.1,
                "flush_period_s": 0.1,
            },
        )
        wait_for(
            lambda: all(p.get_subscription_count() > 0 for p in pubs.values()) or proc.poll() is not None,
            30,
            what="the recorder's subscriptions",
        )
        assert proc.poll() is None, (tmp_path / "recorder_node.log").read_text()
        for i in range(n):
            pubs["joint_states"].publish(
                JointState(name=["j0", "j1"], position=[0.01 * i, -0.01 * i], velocity=[1.0, 2.0])
            )
            pubs["policy_io"].publish(policy_io_msg(np.arange(4) + i, [0.5 * i], [i, -i], [i / 100, 1.0, 2.0, 3]))
            time.sleep(0.005)
        pubs["estop"].publish(Bool(data=True))
        time.sleep(0.6)  # several flush periods: everything received is on disk
        return proc

    def check(bag: Path, n: int) -> BagReader:
        reader = BagReader(bag)
        assert reader.topics == {"/joint_states": (JS, n), "/policy_io": (ARRAY, n), "/estop": ("std_msgs/msg/Bool", 1)}
        assert reader.metadata["policy_sha256"] == file_sha256(policy)
        assert PolicySpec.from_json(reader.metadata["policy_spec"]) == read_spec(policy)
        js = [m.msg for m in reader.messages(["/joint_states"])]
        assert [list(m.position) for m in js] == [[0.01 * i, -0.01 * i] for i in range(n)]
        ios = [policy_io_fields(m.msg) for m in reader.messages(["policy_io"])]
        assert [list(f["action"]) for f in ios] == [[0.5 * i] for i in range(n)]
        np.testing.assert_array_equal(ios[-1]["obs"], np.arange(4) + n - 1)
        times = [m.log_time_ns for m in reader.messages()]
        assert times == sorted(times) and stream_health(times, 0.005, gap_periods=100).backward_jumps == 0
        return reader

    try:
        closed = record(tmp_path / "closed", 40)
        stop(closed)
        assert closed.returncode == 0, (tmp_path / "recorder_node.log").read_text()
        assert check(tmp_path / "closed", 40).complete
        info = yaml.safe_load((tmp_path / "closed" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        assert info["message_count"] == 81 and info["custom_data"]["policy_sha256"] == file_sha256(policy)

        killed = record(tmp_path / "killed", 30)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        reader = check(tmp_path / "killed", 30)
        assert not reader.complete and "61 complete messages recovered" in reader.notes[0]

        refused = start_node("recorder_node", "arm", tmp_path, domain, {"bag": str(tmp_path / "closed")})
        assert refused.wait(timeout=30) == 2
        assert f"bag folder {tmp_path / 'closed'} already exists" in (tmp_path / "recorder_node.log").read_text()
    finally:
        node.destroy_node()
        rclpy.shutdown()
