"""GPU-delegate check of a .tflite: the network must form one GPU partition (DESIGN.md section 3).

    python -m tfpose.export.check_gpu MODEL.tflite [--json]

Rule. An op is *allowed* when its builtin name is in
:data:`tfpose.export.tflite.GPU_DELEGATE_OPS`; the *network* is every CONV_2D,
DEPTHWISE_CONV_2D and TRANSPOSE_CONV op of the main subgraph together with all the ops they
depend on (data flow). The model passes when no disallowed op is in the network, i.e. no
disallowed op comes before the last convolution along any data path. Then the delegate gets the
whole network as its first partition and everything after (decoding: top-k, gathers, NMS) runs
on the CPU. Data flow rather than the flatbuffer's op order decides, because the converter
interleaves independent ops (decoding of the heatmaps may be listed before the regression head's
convolutions) and the delegate partitions by dependencies, not by position.

Partitions (reported, as the TFLite runtime forms them): maximal sets of allowed or disallowed
ops, built greedily in execution order: the current kind takes every op of that kind whose inputs
are ready, until none is left, then the kind flips. The GPU delegate takes the largest allowed
partition (one by default); small allowed runs inside the decoding tail stay on the CPU.

Ops inside control-flow bodies (subgraphs > 0, e.g. the pose-NMS while loop) run on the CPU with
their WHILE op and are not analysed. Exit status: 0 pass, 1 fail, 2 bad input. With ``--json``
the last line is one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from tfpose.export.tflite import CONV_OPS, GPU_DELEGATE_OPS, operators, upstream_ops

# The flatbuffer file identifier of .tflite models (bytes 4..8).
FILE_IDENTIFIER = b"TFL3"
# Partitions listed one by one in the summary; the rest are counted.
SHOWN_PARTITIONS = 4


@dataclasses.dataclass
class GpuCheck:
    """Result of :func:`check_gpu`.

    Args:
        passed: bool, no disallowed op in the network.
        num_ops: int, ops of the main subgraph.
        network_ops: int, ops in the network (convolutions and their dependencies).
        last_conv: int, index of the last convolution in execution order (-1: none).
        partitions: list of dicts ``{"gpu": bool, "ops": int, "first": int, "last": int,
            "op_types": [names]}`` in the order the runtime forms them (``first`` / ``last``:
            smallest and largest op index in it).
        offending: dict ``{"index": int, "op": str, "feeds_conv": int}``: the first disallowed
            op (execution order) in the network and the index of a convolution depending on it;
            None when passed.
    """

    passed: bool
    num_ops: int
    network_ops: int
    last_conv: int
    partitions: list
    offending: dict | None

    def summary(self) -> str:
        """Human-readable report: counts, the first partitions, the verdict."""
        lines = [f"{self.num_ops} ops; network: {self.network_ops} ops (convolutions and what "
                 f"they depend on; last convolution is op {self.last_conv}); "
                 f"{len(self.partitions)} partitions"]
        for p in self.partitions[:SHOWN_PARTITIONS]:
            kinds = ", ".join(p["op_types"][:8]) + (", ..." if len(p["op_types"]) > 8 else "")
            lines.append(f"  {'GPU' if p['gpu'] else 'CPU'} {p['ops']:5d} ops, op {p['first']} "
                         f"to {p['last']}: {kinds}")
        rest = self.partitions[SHOWN_PARTITIONS:]
        if rest:
            lines.append(f"  ... {len(rest)} more partitions, {sum(p['ops'] for p in rest)} ops "
                         "(decoding tail)")
        if self.passed:
            lines.append("PASS: the network is one GPU partition; decoding runs after it")
        else:
            o = self.offending
            lines.append(f"FAIL: op {o['index']} {o['op']} is not a GPU-delegate op and "
                         f"convolution op {o['feeds_conv']} depends on it")
        return "\n".join(lines)


def main_graph(content: bytes) -> list:
    """(name, input tensors, output tensors) of the main subgraph's ops in execution order
    (omitted optional inputs, index -1, left out)."""
    return [(name, tuple(op.Inputs(j) for j in range(op.InputsLength()) if op.Inputs(j) >= 0),
             tuple(op.Outputs(j) for j in range(op.OutputsLength())))
            for name, _, op in operators(content, subgraph=0)]


def partitions(ops: list) -> list:
    """Greedy runtime partitions (module docstring) of (name, inputs, outputs) ops.

    Returns:
        list of (allowed: bool, [op indices]) in formation order.
    """
    produced = {t for _, _, outs in ops for t in outs}
    ready = set()  # tensors produced so far; others (inputs, constants) are ready from the start
    remaining = list(range(len(ops)))
    out = []
    if not ops:
        return out
    kind = ops[0][0] in GPU_DELEGATE_OPS
    while remaining:
        taken, progress = [], True
        while progress:
            progress = False
            for i in list(remaining):
                name, inputs, outputs = ops[i]
                if (name in GPU_DELEGATE_OPS) == kind and all(
                        t in ready or t not in produced for t in inputs):
                    taken.append(i)
                    ready.update(outputs)
                    remaining.remove(i)
                    progress = True
        if taken:
            out.append((kind, sorted(taken)))
        kind = not kind
    return out


def check_gpu(content: bytes) -> GpuCheck:
    """Checks a .tflite flatbuffer against the rule of the module docstring."""
    return check_ops(main_graph(content))


def check_ops(ops: list) -> GpuCheck:
    """The rule of the module docstring on (name, input tensors, output tensors) ops listed in
    execution order (:func:`main_graph`)."""
    producer = {t: i for i, (_, _, outs) in enumerate(ops) for t in outs}
    convs = [i for i, (name, _, _) in enumerate(ops) if name in CONV_OPS]
    feeds = {}  # network op -> the last convolution depending on it
    for conv in reversed(convs):
        if conv not in feeds:
            feeds.update(dict.fromkeys(upstream_ops([conv], lambda i: ops[i][1], producer,
                                                    lambda j: j not in feeds), conv))
    bad = sorted(i for i in feeds if ops[i][0] not in GPU_DELEGATE_OPS)
    parts = [{"gpu": kind, "ops": len(members), "first": members[0], "last": members[-1],
              "op_types": sorted({ops[i][0] for i in members})}
             for kind, members in partitions(ops)]
    offending = None
    if bad:
        offending = {"index": bad[0], "op": ops[bad[0]][0], "feeds_conv": feeds[bad[0]]}
    return GpuCheck(passed=not bad, num_ops=len(ops), network_ops=len(feeds),
                    last_conv=convs[-1] if convs else -1, partitions=parts, offending=offending)


def report(path: str, as_json: bool = False) -> int:
    """Prints the check of the .tflite at ``path``; returns the exit status (module docstring)."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        print(f"error: {path}: {e.strerror or e}", file=sys.stderr)
        return 2
    if content[4:8] != FILE_IDENTIFIER:
        print(f"error: {path}: not a .tflite flatbuffer (no {FILE_IDENTIFIER.decode()} "
              "identifier)", file=sys.stderr)
        return 2
    result = check_gpu(content)
    print(result.summary())
    if as_json:
        print(json.dumps(dataclasses.asdict(result)))
    return 0 if result.passed else 1


def main(argv):
    from tfpose.cli import FLAGS

    if len(argv) != 2:
        print("usage: python -m tfpose.export.check_gpu MODEL.tflite [--json]", file=sys.stderr)
        return 2
    return report(argv[1], FLAGS.json)


if __name__ == "__main__":
    from tfpose import cli

    cli.flags.DEFINE_bool("json", False, "Also print the result as one JSON line (last line).")
    cli.run(main)
