"""The benchmark's report as Markdown tables (``bench.md``) and progress lines."""

from __future__ import annotations

from typing import Any

from bench.servers import MODEL_NAME, READY_INFLIGHT


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(title: str, header: list[str], rows: list[list[Any]], left: int = 1) -> list[str]:
    """A blank line, the title, a blank line and a Markdown table (the first ``left`` columns left-aligned)."""
    align = ["---"] * left + ["---:"] * (len(header) - left)
    return ["", title, "", f"| {' | '.join(header)} |", f"| {' | '.join(align)} |"] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows
    ]


def markdown_tables(report: dict) -> str:
    """The whole report: a line on the setup, then one table per part that ran."""
    meta = report["meta"]
    lines = [
        f"Model: {meta['model']}; device {meta['device']} ({meta['device_name']}); dtype {meta['dtype']}; "
        f"{meta['height']}x{meta['width']}, {meta['steps']} steps; torch {meta['torch']}, "
        f"{meta['torch_threads']} intra-op thread(s) in both processes; {meta['cpu']}."
    ]
    sections = {
        "latency": latency_markdown,
        "throughput": throughput_markdown,
        "ready": ready_markdown,
        "default_vs_one": default_vs_one_markdown,
        "peer": peer_markdown,
    }
    for key, render in sections.items():
        if key in report:
            lines += render(report[key])
    return "\n".join(lines) + "\n"


def latency_markdown(lat: dict) -> list[str]:
    lines = [
        "",
        f"(a) Latency, interleaved, {lat['repeats']} rounds (ms; ratio = served / direct)",
        "",
        "| path | p50 | p90 | mean | p50 ratio | p90 ratio | paired ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, stats in lat["samples"].items():
        ratios = [lat[key].get(name) for key in ("ratio_p50", "ratio_p90", "ratio_paired_median")]
        lines.append(
            f"| {lat['labels'][name]} | {_fmt(stats['p50_ms'])} | {_fmt(stats['p90_ms'])} | "
            f"{_fmt(stats['mean_ms'])} | " + " | ".join(_fmt(r, 3) if r else "1" for r in ratios) + " |"
        )
    server_mean = lat.get("server_pipeline_mean_ms")
    return lines + [
        "",
        "p50 ratio = p50(served) / p50(direct), the goal's measure; paired ratio = median over rounds of "
        "served / direct within the round.",
        "",
        f"PNG+base64 encode of one image (in the bench process): p50 {_fmt(lat['encode']['p50_ms'], 2)} ms. "
        f"Mean pipeline call inside the no-batching server during (a): {_fmt(server_mean)} ms "
        f"(direct mean {_fmt(lat['samples']['direct']['mean_ms'])} ms).",
        f"Serving overhead (served mean - mean pipeline call in the server): REST "
        f"{_fmt(lat['overhead_mean_ms']['rest'])} ms, gRPC {_fmt(lat['overhead_mean_ms']['grpc'])} ms; "
        f"client CPU per call (bench thread, p50): REST {_fmt(lat['client_cpu']['rest'].get('p50_ms'), 2)} ms, "
        f"gRPC {_fmt(lat['client_cpu']['grpc'].get('p50_ms'), 2)} ms.",
        f"Goal p50 ratio <= {lat['goal_ratio_p50']}: REST {_met(lat['goal_met']['rest'])}, "
        f"gRPC {_met(lat['goal_met']['grpc'])}.",
    ]


def throughput_markdown(tp: dict) -> list[str]:
    rows = [
        [label, level["concurrency"], _fmt(level["images_per_s"], 2), _fmt(level["p50_ms"]), _fmt(level["p90_ms"]),
         _fmt(level.get("mean_batch_size"), 2)]
        for label, levels in tp["servers"].items()
        for level in levels
    ]  # fmt: skip
    return _table(
        f"(b) Throughput, closed loop over REST, {tp['requests_per_level']} requests per level",
        ["server", "concurrency", "images/s", "p50 ms", "p90 ms", "mean batch"],
        rows,
    )


def ready_markdown(ready: dict) -> list[str]:
    lines = [
        "",
        f"(c) `/v2/models/{MODEL_NAME}/ready` latency with {READY_INFLIGHT} inferences in flight "
        f"({ready['steps']} steps each), polled every {_fmt(ready['poll_interval_ms'], 0)} ms",
        "",
        "| server | polls | p50 ms | p99 ms | max ms | failures | images done | queue depth midway |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, stats in ready["servers"].items():
        lines.append(
            f"| {label} | {stats['n']} | {_fmt(stats.get('p50_ms'), 2)} | {_fmt(stats.get('p99_ms'), 2)} | "
            f"{_fmt(stats.get('max_ms'), 2)} | {stats['failures']} | {stats['inferences_completed']} | "
            f"{_fmt(stats['queue_depth_midway'], 0)} |"
        )
    lines.append(f"Goal p99 < {ready['goal_p99_ms']:.0f} ms: {_met(ready['goal_met'])}.")
    return lines


def default_vs_one_markdown(section: dict) -> list[str]:
    model = next(iter(section["models"].values()))
    lines = [
        "",
        f"(d) Default server against `--max_batch_size 1`, REST, {model['rounds']} interleaved round(s) of "
        "concurrency 1 (alternating chunks) then 16 on each server",
        "",
        "| model | server | c=1 p50 ms | c=1 p90 ms | c=1 server CPU ms/request | c=16 requests/s | c=16 mean batch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model_key, measured in section["models"].items():
        for key, stats in measured["servers"].items():
            lines.append(
                f"| {model_key} | {section['servers'][key]} | {_fmt(stats['c1_p50_ms'], 2)} | "
                f"{_fmt(stats['c1_p90_ms'], 2)} | {_fmt(stats['c1_cpu_ms_per_request'], 2)} | "
                f"{_fmt(stats['c16_requests_per_s'], 1)} | {_fmt(stats['c16_mean_batch'], 2)} |"
            )
    lines.append("")
    for model_key, measured in section["models"].items():
        goal = section["goals"]["c16_throughput_ratio_min"].get(model_key, 2.0)
        lines.append(
            f"{model_key}: c=1 p50 default / max_batch_size 1 = {measured['c1_p50_ratio']:.3f} (goal <= "
            f"{section['goals']['c1_p50_ratio_max']}: {_met(measured['goal_met']['c1_p50'])}); c=16 throughput ratio "
            f"{measured['c16_throughput_ratio']:.2f} (goal >= {goal}: {_met(measured['goal_met']['c16_throughput'])})."
        )
    return lines


def peer_markdown(section: dict) -> list[str]:
    """(peer): ours against huggingfaceserver per concurrency level, then the ratios against the goals."""
    if "skipped" in section:
        return ["", f"(peer) Against KServe's huggingfaceserver: skipped: {section['skipped']}."]
    rows = [
        [key, level["concurrency"], _fmt(level["requests_per_s"], 1), _fmt(level["p50_ms"], 2), _fmt(level["p90_ms"], 2),
         _fmt(level["cpu_ms_per_request"], 2)]
        for key, levels in section["servers"].items()
        for level in levels
    ]  # fmt: skip
    lines = _table(
        f"(peer) Ours (default flags) against KServe's huggingfaceserver, {section['model']}, REST, "
        f"{section['rounds']} interleaved round(s) of {section['requests_per_level']} requests per server and level",
        ["server", "concurrency", "requests/s", "p50 ms", "p90 ms", "server CPU ms/request"],
        rows,
    )
    lines.append("")
    for ratio in section["ratios"]:
        goal = "" if ratio["goal_min"] is None else f" (goal >= {ratio['goal_min']}: {_met(ratio['goal_met'])})"
        lines.append(
            f"c={ratio['concurrency']}: ours / peer throughput {ratio['throughput_ratio']:.2f}{goal}; "
            f"CPU per request {_fmt(ratio['cpu_per_request_ratio'], 2)}."
        )
    answers = section["answers"]
    lines.append(
        "Same request, answers: "
        + "; ".join(f"{key} {', '.join(a['outputs'])} -> {a['labels']}" for key, a in answers.items())
        + ("" if section["same_labels"] else " (labels DIFFER)")
        + "."
    )
    return lines


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("met" if value else "NOT met")


def print_latency(lat: dict) -> None:
    for name, stats in lat["samples"].items():
        ratio = lat["ratio_p50"].get(name)
        print(
            f"  {name:<14} p50 {stats['p50_ms']:8.2f} ms  p90 {stats['p90_ms']:8.2f} ms"
            + (f"  ratio p50 {ratio:.3f}" if ratio else ""),
            flush=True,
        )
