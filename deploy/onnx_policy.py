"""An exported policy on onnxruntime, with the PolicySpec it carries in its metadata."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from deploy.spec import PolicySpec, SpecError

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from onnx import ModelProto

SPEC_KEY = "s2r.policy_spec"
TASK_CONFIG_KEY = "s2r.task_config"  # the training task's config, so evaluation matches training
CHECKPOINT_KEY, ITERATION_KEY = "s2r.checkpoint", "s2r.iteration"  # where the policy came from (eval.json)
INPUT_NAME, OUTPUT_NAME = "obs", "action"


class PolicyLoadError(ValueError):
    """The file is not an s2r policy, or its network disagrees with its PolicySpec."""


def load_model(path: str | Path) -> tuple[ModelProto, bytes]:
    """The ONNX model in `path` and the bytes it was parsed from, refused when a tensor keeps its data in
    another file: an external-data location may name any file, and a policy is one self-contained file.
    Sessions are built from these bytes, so nothing but the checked file is ever read."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise PolicyLoadError(f"policy file not found: {path}")
    data = path.read_bytes()
    try:
        model = onnx.load(io.BytesIO(data), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others
        raise PolicyLoadError(f"{path} is not a readable ONNX file: {e}") from e
    external = dict(_external_tensors(model))
    if external:
        raise PolicyLoadError(
            f"{path}: tensor(s) {sorted(external)[:5]} keep their data in other files "
            f"{sorted(set(external.values()))}; only self-contained ONNX files are loaded (no file a model names "
            "is read): save it without external data"
        )
    return model, data


def _external_tensors(msg: Message) -> Iterator[tuple[str, str]]:
    """(name, file location) of the tensors anywhere in `msg` (initializers, attributes, subgraphs,
    functions) whose data lives outside the model."""
    from onnx import TensorProto

    if isinstance(msg, TensorProto) and (msg.data_location == TensorProto.EXTERNAL or len(msg.external_data)):
        yield msg.name, next((e.value for e in msg.external_data if e.key == "location"), "")
    for field, value in msg.ListFields():
        if field.message_type is not None:  # a message, or a repeated one
            for m in [value] if hasattr(value, "ListFields") else value:
                yield from _external_tensors(m)


def read_metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in load_model(path)[0].metadata_props}


def read_spec(path: str | Path) -> PolicySpec:
    """The PolicySpec stored in an ONNX file's metadata."""
    return spec_from_metadata(read_metadata(path), path)


def spec_from_metadata(props: dict[str, str], path: str | Path) -> PolicySpec:
    """The PolicySpec in an ONNX file's metadata `props`; errors name the file `path`."""
    if SPEC_KEY not in props:
        raise PolicyLoadError(f"{path} has no '{SPEC_KEY}' metadata: not exported by s2r")
    try:
        return PolicySpec.from_json(props[SPEC_KEY])
    except SpecError as e:
        raise PolicyLoadError(f"{path}: {e}") from e


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class OnnxPolicy:
    """`obs (batch, obs_dim) float32 -> raw action (batch, action_dim)`; one intra-op thread, as a
    control loop wants (no thread pool competing with it)."""

    def __init__(self, path: str | Path, expected: PolicySpec | None = None):
        import onnxruntime as ort

        path = Path(path)
        self.path = path
        model, data = load_model(path)
        self.metadata = {p.key: p.value for p in model.metadata_props}
        self.spec = spec_from_metadata(self.metadata, path)
        if expected is not None:
            self.spec.check_compatible(expected)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise PolicyLoadError(f"{path}: onnxruntime cannot load it: {e}") from e
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise PolicyLoadError(
                f"{path}: expected one input '{INPUT_NAME}' and one output '{OUTPUT_NAME}', got "
                f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
            )
        obs_dim, act_dim = inputs[0].shape[-1], outputs[0].shape[-1]
        if obs_dim != self.spec.obs_dim or act_dim != self.spec.action_dim:
            raise PolicyLoadError(
                f"{path}: network takes {obs_dim} obs and gives {act_dim} actions, but its PolicySpec "
                f"says {self.spec.obs_dim} and {self.spec.action_dim}"
            )
        self.sha256 = hashlib.sha256(data).hexdigest()  # of the bytes the session runs

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        return cast(np.ndarray, self.session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0])  # a dense output tensor
