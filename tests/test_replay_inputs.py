"""Damaged or hostile replay inputs are named, not followed: a CSV cut mid-line or with a malformed value,
a bag cut before its first message, an ONNX file whose tensors point at other files."""

from __future__ import annotations

import re
import shutil

import onnx
import pytest
from onnx.external_data_helper import convert_model_to_external_data

from deploy.onnx_policy import OnnxPolicy, PolicyLoadError, read_spec
from replay.bag import BagWriter
from replay.bench import SHIPPED
from replay.candidates import normalizer_stats
from replay.mapping import MappingError, import_log, parse_mapping
from s2r.cli import main

MAPPING = parse_mapping(
    {"format": "csv", "rate_hz": 100, "time": {"fields": ["t"]}, "quantities": {"pos_w_m": {"fields": ["x", "y", "z"]}}}
)
ROWS = "t,x,y,z\n0.00,1,2,3\n0.01,1,2,3\n0.02,1,2,3\n"


def test_csv_cut_mid_line_reads_to_its_last_complete_line(tmp_path):
    for cut in ("0.03,1,", "0.03,1,2,3e", "0.03,1,2,-"):  # a cell missing, a number cut inside
        (tmp_path / "cut.csv").write_text(ROWS + cut)
        log = import_log(tmp_path / "cut.csv", MAPPING, chunk_rows=3)  # the cut after a full chunk
        assert len(log) == 3 and len(log.notes) == 1, (cut, log.notes)
        assert re.fullmatch(r"cut.csv ends inside line 5 \(column '[yz]': .+\), .*: read up to line 4", log.notes[0])
    (tmp_path / "whole.csv").write_text(ROWS + "0.03,1,2,3")  # every cell there: kept, no note
    assert len(import_log(tmp_path / "whole.csv", MAPPING).notes) == 0
    (tmp_path / "first.csv").write_text("t,x,y,z\n0.00,1")
    with pytest.raises(MappingError, match=r"first.csv: line 2, its first data row, is cut short \(column 'y'"):
        import_log(tmp_path / "first.csv", MAPPING)


def test_csv_malformed_row_names_file_line_and_column(tmp_path):
    (tmp_path / "bad.csv").write_text(ROWS.replace("0.01,1,2,3", "0.01,1,2.5.1,3") + "0.03,1,2,3\n")
    with pytest.raises(MappingError, match=r"bad.csv, line 3, column 'y': '2.5.1' is not a number"):
        import_log(tmp_path / "bad.csv", MAPPING)
    (tmp_path / "short.csv").write_text(ROWS + "0.03,1\n")  # ends with its line end: not a cut, malformed
    with pytest.raises(MappingError, match=r"short.csv, line 5, column 'y': missing, the line has 2 of the header's 4"):
        import_log(tmp_path / "short.csv", MAPPING)


def test_mcap_cut_before_its_first_message_is_named_truncated(tmp_path, capsys):
    with BagWriter(tmp_path / "bag") as bag:
        for i in range(20):
            bag.write_msg("/policy_io", "std_msgs/msg/Float64MultiArray", {"data": [float(i)] * 8}, 10**9 + i * 10**7)
    (tmp_path / "bag.mcap").write_bytes((tmp_path / "bag" / "bag_0.mcap").read_bytes()[:100])
    assert main(["replay", str(tmp_path / "bag.mcap"), "--out", str(tmp_path / "out")]) == 2
    assert "s2r: error: bag.mcap is truncated after 100 bytes: no complete message" in capsys.readouterr().err


def test_onnx_with_external_data_is_refused_naming_the_file(tmp_path):
    model = onnx.load(str(SHIPPED / "quadrotor.onnx"), load_external_data=False)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="../secret.bin", size_threshold=0)
    for tensor in model.graph.initializer:  # data "elsewhere", as a hostile file would say (onnx.save refuses '..')
        tensor.ClearField("raw_data")
    (tmp_path / "policy.onnx").write_bytes(model.SerializeToString())
    for load in (OnnxPolicy, read_spec, normalizer_stats):
        with pytest.raises(PolicyLoadError, match=r"policy.onnx: tensor\(s\) \[.*\] keep their data in other files "):
            load(tmp_path / "policy.onnx")
    shutil.copy(SHIPPED / "quadrotor.onnx", tmp_path / "whole.onnx")  # self-contained: loads, sha of its bytes
    assert OnnxPolicy(tmp_path / "whole.onnx").sha256 == OnnxPolicy(SHIPPED / "quadrotor.onnx").sha256
