"""Can TensorRT-RTX host fastmlr's fused ops? A Python IPluginV3 through its ONNX parser, step by step.

    python tools/rtx_plugin_probe.py            # runs the probe in a child process, reports how far it got

TensorRT-RTX's Python module has the IPluginV3 classes (IPluginV3OneCore/Build/Runtime and a
creator) but neither ``tensorrt.plugin`` nor the ahead-of-time interface (``IPluginV3QuickAOTBuild``,
``QuickPluginCreationRequest``), and its ``INetworkDefinition`` has no ``add_plugin*`` method: a
plugin layer can only come from the ONNX parser, which looks the node's op type up in the plugin
registry. The child registers a Python plugin creator for ``fastmlr::ProbePlugin``, a stand-in shaped like a covariance pooling (output
[N, D, D] from x [N, D, P]; its ``enqueue`` is where a kernel would be launched), parses a one-node
graph that uses it and builds an engine, printing each step as it passes; the parent reports the
child's exit status (an abort kills the child, not the caller). Without a GPU no engine can be run,
so whatever builds can only be inspected for what it would need at run time.
"""

from __future__ import annotations

import subprocess
import sys

STEPS = r'''
import sys
import tensorrt_rtx as trt
from onnx import TensorProto, helper

def say(*a):
    print(*a, flush=True)

say("tensorrt_rtx", trt.__version__)
say("tensorrt.plugin-style quick AOT interface:", hasattr(trt, "IPluginV3QuickAOTBuild"),
    "; INetworkDefinition add_plugin*:", [n for n in dir(trt.INetworkDefinition) if "plugin" in n.lower()])

class ProbePlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
    def __init__(self):
        trt.IPluginV3.__init__(self)
        trt.IPluginV3OneCore.__init__(self)
        trt.IPluginV3OneBuild.__init__(self)
        trt.IPluginV3OneRuntime.__init__(self)
        self.num_outputs, self.plugin_namespace, self.plugin_name, self.plugin_version = 1, "fastmlr", "ProbePlugin", "1"

    def get_capability_interface(self, kind):
        return self

    def get_output_data_types(self, input_types):
        return [input_types[0]]

    def get_output_shapes(self, inputs, shape_inputs, expr_builder):
        out = trt.DimsExprs(3)
        out[0], out[1], out[2] = inputs[0][0], inputs[0][1], inputs[0][1]
        return [out]

    def supports_format_combination(self, pos, in_out, num_inputs):
        d = in_out[pos].desc
        return d.format == trt.TensorFormat.LINEAR and d.type == trt.DataType.FLOAT

    def configure_plugin(self, inputs, outputs):
        pass

    def on_shape_change(self, inputs, outputs):
        pass

    def get_workspace_size(self, inputs, outputs):
        return 0

    def get_valid_tactics(self):
        return []

    def set_tactic(self, tactic):
        pass

    def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
        raise RuntimeError("no kernel: this probe only builds")

    def attach_to_context(self, context):
        return self.clone()

    def get_fields_to_serialize(self):
        return trt.PluginFieldCollection([])

    def clone(self):
        c = ProbePlugin()
        c.__dict__.update(self.__dict__)
        return c


class Creator(trt.IPluginCreatorV3One):
    def __init__(self):
        trt.IPluginCreatorV3One.__init__(self)
        self.name, self.plugin_namespace, self.plugin_version = "ProbePlugin", "fastmlr", "1"
        self.field_names = trt.PluginFieldCollection([])

    def create_plugin(self, name, fc, phase):
        say("  create_plugin called:", name, phase)
        return ProbePlugin()


creator = Creator()  # kept alive: the registry holds a pointer, not a reference
ok = trt.get_plugin_registry().register_creator(creator, "fastmlr")
say("1 register_creator:", ok, "; found again:", trt.get_plugin_registry().get_creator("ProbePlugin", "1", "fastmlr") is not None)

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])
node = helper.make_node("ProbePlugin", ["x"], ["y"], domain="fastmlr", name="sop", plugin_namespace="fastmlr")
model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("fastmlr", 1)])
logger = trt.Logger(trt.Logger.VERBOSE if "-v" in sys.argv else trt.Logger.WARNING)
builder = trt.Builder(logger)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
parser = trt.OnnxParser(network, logger)
say("2 parsing a graph with one fastmlr::ProbePlugin node ...")
ok = parser.parse(model.SerializeToString())
say("3 parsed:", ok, [str(parser.get_error(i)) for i in range(parser.num_errors)], "layers:", network.num_layers)
if not ok:
    sys.exit(3)
config = builder.create_builder_config()
profile = builder.create_optimization_profile()
profile.set_shape("x", (1, 4, 6), (2, 4, 6), (4, 4, 6))
config.add_optimization_profile(profile)
say("4 building ...")
blob = builder.build_serialized_network(network, config)
say("5 built:", blob is not None and len(bytes(blob)))
sys.exit(0 if blob is not None else 5)
'''


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run = subprocess.run([sys.executable, "-c", STEPS, *argv], capture_output=True, text=True, timeout=300)
    print(run.stdout, end="")
    tail = [line for line in run.stderr.splitlines() if line.strip()][-8:]
    if tail:
        print("child stderr (last lines):\n  " + "\n  ".join(tail))
    status = f"signal {-run.returncode}" if run.returncode < 0 else f"exit {run.returncode}"
    print(f"child process: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
