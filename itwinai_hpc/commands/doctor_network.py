"""The doctor's all-reduce verdict: bus bandwidth (nccl-tests' busbw: 2(n-1)/n * bytes / time)
and the transport the collective library picked, read from NCCL's (or RCCL's) INFO log
(`NCCL_DEBUG=INFO`, one file per process in the run folder's doctor/), with advice where it fell
back to TCP sockets between nodes. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from itwinai_hpc.commands.doctor_checks import FAIL, PASS, WARN, Check, Expected

VIA_NET = re.compile(r"via NET/([A-Za-z][A-Za-z _-]*?)(?:/|\s|$)")
USING_NETWORK = re.compile(r"Using network ([A-Za-z][A-Za-z _-]*?)\s*$", re.M)
NO_VERBS = re.compile(r"Failed to open libibverbs|libibverbs\.so[^\n]*(?:No such file|cannot "
                      r"open)")
NO_IB_DEVICE = re.compile(r"NET/IB ?: No device found")
NO_PLUGIN = re.compile(r"No plugin found|Could not find: lib[a-z]*-net|NET/Plugin[^\n]*"
                       r"(?:cannot open shared object|not found)|Using internal net")
IB_DISABLED = re.compile(r"NCCL_IB_DISABLE set by environment to 1")

SOCKETS_ADVICE = {
    "verbs": "the image lacks libibverbs (NCCL opens it for InfiniBand): build the image on "
             "NVIDIA's PyTorch container, or install rdma-core (libibverbs1, ibverbs-providers) "
             "in it",
    "device": "NCCL found no InfiniBand device: check that /dev/infiniband is visible in the "
              "container and the node has a HCA; on Slingshot (HPE Cray) it needs an OFI "
              "plugin instead",
    "plugin": "no NCCL network plugin was found (libnccl-net.so): on Slingshot systems NCCL "
              "needs aws-ofi-nccl and RCCL aws-ofi-rccl: load nccl-plugin (Perlmutter: "
              "--module=gpu,nccl-plugin), enable the EDF's aws_ofi_nccl hook (Alps), bind "
              "the plugin into the container (LUMI: lumi-aif-singularity-bindings)",
    "disabled": "NCCL_IB_DISABLE=1 is set in the step's environment: it turns InfiniBand off "
                "(set it to 0, as Vega's scripts do)",
    "forced": "NCCL_NET=Socket is set in the step's environment: it forces TCP sockets",
}


@dataclass
class Transport:
    net: str | None = None                       # IB, OFI, Socket, ... (between nodes)
    local: list[str] = field(default_factory=list)   # P2P, SHM (inside a node)
    causes: list[str] = field(default_factory=list)  # keys of SOCKETS_ADVICE


def transport(logs: list[str], env: dict[str, str] | None = None) -> Transport:
    """What NCCL's INFO logs say it used between nodes and inside one, and why it might have
    fallen back to sockets."""
    text = "\n".join(logs)
    nets = [_name(n) for n in VIA_NET.findall(text)] or \
        [_name(n) for n in USING_NETWORK.findall(text)]
    t = Transport(net=_most_common(nets))
    t.local = sorted({kind for kind in ("P2P", "SHM") if f"via {kind}" in text})
    env = env or {}
    for key, found in (("verbs", NO_VERBS.search(text)),
                       ("device", NO_IB_DEVICE.search(text)),
                       ("plugin", NO_PLUGIN.search(text)),
                       ("disabled", IB_DISABLED.search(text) or env.get("NCCL_IB_DISABLE") == "1"),
                       ("forced", env.get("NCCL_NET", "").lower() == "socket")):
        if found:
            t.causes.append(key)
    return t


def _name(raw: str) -> str:
    raw = raw.strip()
    if re.search(r"libfabric|ofi|aws", raw, re.I):
        return "OFI"
    return {"ib": "IB", "socket": "Socket"}.get(raw.lower(), raw)


def _most_common(names: list[str]) -> str | None:
    return max(set(names), key=names.count) if names else None


def bus_bandwidth(nbytes: int, seconds: float, ranks: int) -> tuple[float, float]:
    """(algorithm, bus) bandwidth in GB/s (1e9 B/s) of an all-reduce, as nccl-tests reports
    them: algbw = bytes / time, busbw = algbw * 2(n-1)/n."""
    alg = nbytes / seconds / 1e9
    return alg, alg * 2 * (ranks - 1) / ranks


def check_allreduce(facts: dict, want: Expected, nccl_logs: list[str]) -> Check:
    ar = facts["allreduce"]
    ranks = facts["ranks"]
    nodes = len({r["node"] for r in ranks})
    env = ranks[0].get("env") or {}
    nccl = ar["backend"] == "nccl"
    t = transport(nccl_logs, env) if nccl else Transport(net="TCP")
    details = {**ar, "nodes": nodes, "transport": t.net, "inside_node": t.local,
               "causes": t.causes}
    size = f"{ar['bytes'] / 2**20:g} MiB over {ar['world_size']} rank(s) on {nodes} node(s)"
    library = (f"NCCL {facts['versions'].get('nccl') or ''}".strip() if nccl else "gloo")
    if ar.get("error") or ar.get("correct") is False:
        why = ar.get("error") or "the sum came back wrong"
        return Check("allreduce", FAIL, f"{size} on {library}: {why}",
                     [*(SOCKETS_ADVICE[c] for c in t.causes), "the NCCL log of each process "
                      "is in the run folder's doctor/ (NCCL_DEBUG=INFO)"], details)
    if not ar.get("seconds") or ar["world_size"] < 2:
        return Check("allreduce", PASS, f"one rank: nothing to all-reduce across ({library})",
                     [], details)
    alg, bus = bus_bandwidth(ar["bytes"], ar["seconds"], ar["world_size"])
    details.update(algbw_gb_s=alg, busbw_gb_s=bus)
    summary = (f"{size}: bus bandwidth {bus:.2f} GB/s (algorithm {alg:.2f} GB/s, "
               f"{ar['seconds'] * 1e3:.1f} ms each) on {library}")
    if not nccl:
        via = env.get("GLOO_SOCKET_IFNAME")
        summary += " over TCP" + (f" ({via})" if via else "")
        if want.gpus_per_node:
            return Check("allreduce", WARN, summary + ": not every rank had a GPU, so NCCL "
                         "was not used", ["see the gpus check"], details)
        return Check("allreduce", PASS, summary + ": a CPU step", [], details)
    if nodes < 2:
        return Check("allreduce", PASS, summary + " inside one node"
                     + (f" ({', '.join(t.local)})" if t.local else ""), [], details)
    if t.net in ("IB", "OFI"):
        return Check("allreduce", PASS, summary + f" over NET/{t.net} between nodes", [],
                     details)
    if t.net == "Socket":
        return Check("allreduce", WARN, summary + " over TCP sockets between nodes (NET/Socket)"
                     ": a fraction of what the fast network carries", _socket_advice(t),
                     details)
    return Check("allreduce", WARN, summary + f"; the transport between nodes is unknown "
                 f"({t.net or 'no NET line in the NCCL log'})",
                 ["read the NCCL log in the run folder's doctor/ (NCCL_DEBUG=INFO)"], details)


def _socket_advice(t: Transport) -> list[str]:
    causes = t.causes or ["verbs", "plugin"]
    return [SOCKETS_ADVICE[c] for c in causes]
