"""`llamactl doctor`: versions, GPU support, devices, memory, disk, paths."""

from __future__ import annotations

from typing import Any

from llamactl.cli.options import JsonOpt


def render(report: dict[str, Any]) -> list[str]:
    from llamactl.fsutil import human_bytes

    def size(n: Any) -> str:
        return human_bytes(n) if isinstance(n, int) else "unknown"

    v = report["versions"]
    lc = report["llama_cpp"]
    lines = [
        f"python             {v['python']}",
        f"llamactl           {v['llamactl']}",
        f"llama-cpp-python   {v.get('llama_cpp_python') or 'not installed'}",
        f"llama.cpp system   {lc['system_info'] or 'unknown'}",
        f"ggml build         {lc.get('ggml_version') or 'unknown'} ({lc.get('ggml_commit') or 'unknown'})",
        f"CPU                {report['cpu']['model']}, {report['cpu']['cores_logical']} logical cores",
        f"GPU offload        {'yes' if lc['gpu_offload'] else 'no (CPU-only build)'}",
        "",
        "devices llama.cpp sees:",
    ]
    if not lc["devices"]:
        lines.append("  none")
    for d in lc["devices"]:
        lines.append(f"  {d['name']:<10} {d['kind']:<6} {d['description']}  "
                     f"total {size(d['total'])}, free {size(d['free'])}  usable: yes")
    nv = report["nvidia"]
    lines.append("")
    if nv["source"] == "none":
        lines.append("NVIDIA GPUs:       none (no NVIDIA driver: neither NVML nor nvidia-smi found)")
    else:
        driver = f"driver {nv['driver']}, " if nv.get("driver") else ""
        lines.append(f"NVIDIA GPUs ({driver}via {nv['source']}):")
        if not nv["gpus"]:
            lines.append("  none")
    for g in nv["gpus"]:
        lines.append(f"  [{g['index']}] {g['name']}  total {size(g['total'])}, free {size(g['free'])}  "
                     f"usable by this build: {'yes' if g['usable'] else 'no'}")
    ram = report["ram"]
    lines += ["", f"RAM                total {size(ram['total'])}, available {size(ram['available'])}"]
    for key, label in (("models", "disk (models)"), ("hf_hub_cache", "disk (HF cache)")):
        d = report["disk"][key]
        lines.append(f"{label:<19}{size(d['free'])} free in {d['path']}")
    lines += ["", "paths:"]
    for key, value in report["paths"].items():
        lines.append(f"  {key:<14} {value or '-'}")
    return lines


def register(app: Any) -> None:
    @app.command("doctor", help="Check this machine: versions, GPU support, devices and their "
                                "memory, disk, paths.")
    def doctor_cmd(as_json: JsonOpt = False) -> None:
        from llamactl import machine
        from llamactl.cli import output

        report = machine.machine_report()
        if as_json:
            output.json_doc(report)
        else:
            for line in render(report):
                output.data(line)
        for p in report["problems"]:
            if p["level"] == "error":
                output.error(p["message"])
            else:
                output.warn(p["message"])
            if p.get("command"):
                output.hint(f"run: {p['command']}")
