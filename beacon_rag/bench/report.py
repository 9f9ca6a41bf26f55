"""``beacon-rag bench report``: plots and the README results section, from the results JSON.

Why a separate step: the measurements take long and run on a loaded machine, the presentation
must not re-measure anything. Every number in the generated section is read from
``benchmarks/results/*.json`` of one run, and every headline is a ratio of two figures measured
side by side in that run. The README is only touched between ``README_START`` and ``README_END``.

This module also holds the small helpers every bench of the suite shares (where results live,
how they are written, what machine they came from), so the benches agree on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"
RESULTS_ENV = "BEACON_RAG_BENCH_RESULTS"
REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- shared helpers
def results_dir() -> Path:
    """``$BEACON_RAG_BENCH_RESULTS`` or the repository's ``benchmarks/results``."""
    return Path(os.environ.get(RESULTS_ENV) or REPO_ROOT / "benchmarks" / "results")


def save_result(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    logger.info("wrote %s", path)
    return path


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table: every bench, note and README table is built by this one rule."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return [line(head), "|" + "---|" * len(head), *map(line, rows)]


class _Clock:
    seconds: float = 0.0


@contextlib.contextmanager
def timed_section() -> Iterator[_Clock]:
    """Wall-clock duration of a block (benches record their own duration in their JSON)."""
    clock = _Clock()
    started = time.perf_counter()
    try:
        yield clock
    finally:
        clock.seconds = time.perf_counter() - started


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: a results table must name it."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: platform's answer stands
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    memory = None
    with contextlib.suppress(ImportError):
        import psutil

        memory = psutil.virtual_memory().total
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_bytes": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_end": list(load) if load else None,
    }


def load_results(directory: Path | None = None) -> dict[str, Any]:
    """Every ``*.json`` of a results folder, by file stem; unreadable files are skipped, logged."""
    directory = directory or results_dir()
    out: dict[str, Any] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            logger.warning("skipping unreadable result %s: %s", path, err)
    return out


# ----------------------------------------------------------------------------- numbers
def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as "1/N" when a is smaller, "Nx" when larger."""
    if not a or not b:
        return "-"
    r = a / b
    if 0.95 <= r <= 1.05:
        return f"{r:.2f}x"
    return f"1/{1 / r:.1f}" if r < 1 else f"{r:.2f}x"


def scaling_series(result: dict[str, Any], curve: str) -> dict[str, list[float | None]]:
    """Per method, the time-to-first-token series along one curve (x first)."""
    rows = result["curves"][curve]
    x_key = "context_tokens" if curve == "context" else "documents"
    series: dict[str, list[float | None]] = {
        "x": [r[x_key] for r in rows],
        "full prefill (transformers)": [r["full_prefill_s"] for r in rows],
        "prompt reuse (transformers, deepcopy)": [r["prompt_reuse_s"] for r in rows],
        "question only (floor)": [r["question_only_s"] for r in rows],
    }
    for config in result["configs"]:
        for phase in ("cold", "warm_ram", "warm_disk"):
            series[f"{config} {phase.replace('_', ' ')}"] = [r["configs"][config].get(f"{phase}_s") for r in rows]
    return series


# ----------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on CI or a server
    import matplotlib.pyplot as plt

    return plt


def _style(name: str) -> dict[str, Any]:
    if "full prefill" in name:
        return {"color": "black", "linewidth": 2.5}
    if "question only" in name:
        return {"color": "grey", "linestyle": ":", "linewidth": 2}
    if "prompt reuse" in name:
        return {"color": "tab:purple", "linestyle": "-.", "linewidth": 2}
    colors = {"exact": "tab:blue", "beacon-r2": "tab:orange", "beacon-r4": "tab:green", "beacon-r8": "tab:red",
              "beacon-r16": "tab:brown"}
    config = name.split(" ")[0]
    dash = {"cold": "-", "warm ram": "--", "warm disk": ":"}[name.split(" ", 1)[1]]
    return {"color": colors.get(config, None), "linestyle": dash, "marker": "o", "markersize": 3}


def _save_figure(plt: Any, fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG and free it (figures left open accumulate in a long report run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(result: dict[str, Any], curve: str, path: Path) -> Path:
    """Time to first token along one curve, log-log: the slope is how the cost grows with the work.

    Left: the exact configuration against the transformers baselines; right: beacon at each ratio
    (cold and warm from RAM) against the same baselines. One panel with everything is unreadable.
    """
    plt = _pyplot()
    series = scaling_series(result, curve)
    x = series.pop("x")
    baselines = [n for n in series if n.split(" ")[0] not in result["configs"]]
    panels = [
        ("exact (lossless): cold, warm RAM, warm disk", baselines + [n for n in series if n.startswith("exact ")]),
        ("beacon at each ratio: cold and warm RAM", baselines + [n for n in series if n.startswith("beacon")
                                                               and not n.endswith("warm disk")]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            pts = [(a, b) for a, b in zip(x, series[name]) if b]
            if pts:
                ax.plot(*zip(*pts), label=name, **_style(name))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(x, [str(v) for v in x])
        ax.minorticks_off()
        ax.set_xlabel("context tokens" if curve == "context" else
                      f"documents of {result['tokens_per_document_for_documents_curve']} tokens")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("time to first token (s)")
    fig.suptitle(f"Time to first token vs {'context length' if curve == 'context' else 'number of documents'} "
                 f"({result['model']}, {result['machine']['torch_threads']} thread(s), best of runs)", fontsize=11)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def plot_memory(result: dict[str, Any], path: Path) -> Path:
    """KV bytes per context token and documents per 1 GB RAM tier, per configuration."""
    plt = _pyplot()
    rows = result["configs"]
    names = [r["config"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r["kv_bytes_per_token"] for r in rows], color="tab:blue")
    left.set_ylabel("KV bytes per context token")
    left.set_yscale("log")
    right.bar(names, [r.get("documents_in_1gb_ram_tier") or 0 for r in rows], color="tab:green")
    right.set_ylabel(f"documents of {result['tokens_per_document']} tokens in a 1 GB RAM tier")
    right.set_yscale("log")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Memory per configuration ({result['model']})", fontsize=10)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def plot_throughput(result: dict[str, Any], path: Path) -> Path:
    """Queries per second and TTFT p50/p95 per configuration on the same query stream."""
    plt = _pyplot()
    rows = result["configs"]
    names = [r["config"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r["qps"] for r in rows], color="tab:blue")
    left.set_ylabel("queries per second")
    width = 0.4
    xs = range(len(names))
    right.bar([i - width / 2 for i in xs], [r["ttft_p50_s"] for r in rows], width, label="p50")
    right.bar([i + width / 2 for i in xs], [r["ttft_p95_s"] for r in rows], width, label="p95")
    right.set_xticks(list(xs), names)
    right.set_ylabel("time to first token (s)")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{result['queries']} RAG queries, Zipf(s={result['zipf_s']}) over {result['corpus_documents']} "
                 f"documents ({result['model']})", fontsize=10)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def write_plots(results: dict[str, Any], plots: Path) -> list[Path]:
    out = []
    if "scaling" in results:
        out.append(plot_scaling(results["scaling"], "context", plots / "ttft_vs_context.png"))
        out.append(plot_scaling(results["scaling"], "documents", plots / "ttft_vs_documents.png"))
    if "memory" in results:
        out.append(plot_memory(results["memory"], plots / "memory.png"))
    if "throughput" in results:
        out.append(plot_throughput(results["throughput"], plots / "throughput.png"))
    return out


# ----------------------------------------------------------------------------- markdown
def machine_line(machine: dict[str, Any]) -> str:
    memory = f", {machine['memory_bytes'] / (1 << 30):.0f} GiB RAM" if machine.get("memory_bytes") else ""
    load = machine.get("load_average_at_end")
    load_text = f"; load average {load[0]:.1f} at the end (shared machine)" if load else ""
    return (f"{machine['cpu']}, {machine['cores']} cores{memory}, {machine.get('gpu') or 'no GPU'}; "
            f"torch {machine['torch']} on {machine['torch_threads']} thread(s), transformers "
            f"{machine['transformers']}, Python {machine['python']}{load_text}")


def scaling_markdown(result: dict[str, Any], plots_rel: str) -> str:
    configs = result["configs"]
    beacons = [c for c in configs if c != "exact"]
    lines = [f"### Time to first token vs context length ({result['documents_for_context_curve']} documents)", ""]
    head = ["context tokens", "full prefill", "transformers prompt reuse", "question only", "exact cold",
            "exact warm RAM", "exact warm disk", "warm RAM vs full prefill"]
    rows = []
    for r in result["curves"]["context"]:
        ex = r["configs"].get("exact", {})
        rows.append([
            str(r["context_tokens"]), _fmt_s(r["full_prefill_s"]), _fmt_s(r["prompt_reuse_s"]),
            _fmt_s(r["question_only_s"]), _fmt_s(ex.get("cold_s")), _fmt_s(ex.get("warm_ram_s")),
            _fmt_s(ex.get("warm_disk_s")), _ratio(ex.get("warm_ram_s"), r["full_prefill_s"])])
    lines += markdown_table(head, rows)
    if beacons:
        lines += ["", "Beacon, cold / warm RAM / warm disk (fresh process):", ""]
        head = ["context tokens", *beacons]
        rows = []
        for r in result["curves"]["context"]:
            cells = [str(r["context_tokens"])]
            for c in beacons:
                cfg = r["configs"][c]
                cells.append(f"{_fmt_s(cfg['cold_s'])} / {_fmt_s(cfg['warm_ram_s'])} / {_fmt_s(cfg.get('warm_disk_s'))}")
            rows.append(cells)
        lines += markdown_table(head, rows)
    lines += ["", f"![time to first token vs context]({plots_rel}/ttft_vs_context.png)", ""]
    lines += [(f"### Time to first token vs number of documents "
               f"({result['tokens_per_document_for_documents_curve']} tokens each)"), ""]
    head = ["documents", "context tokens", "full prefill", "prompt reuse", "exact cold", "exact warm RAM",
            "exact warm disk"] + [f"{c} warm RAM" for c in beacons]
    rows = []
    for r in result["curves"]["documents"]:
        ex = r["configs"]["exact"]
        cells = [str(r["documents"]), str(r["context_tokens"]), _fmt_s(r["full_prefill_s"]),
                 _fmt_s(r["prompt_reuse_s"]), _fmt_s(ex["cold_s"]), _fmt_s(ex["warm_ram_s"]),
                 _fmt_s(ex.get("warm_disk_s"))]
        cells += [_fmt_s(r["configs"][c]["warm_ram_s"]) for c in beacons]
        rows.append(cells)
    lines += markdown_table(head, rows)
    lines += ["", f"![time to first token vs documents]({plots_rel}/ttft_vs_documents.png)", ""]
    return "\n".join(lines)


def scaling_headlines(result: dict[str, Any]) -> list[str]:
    """Ratios at the longest context of the run, each of two figures measured side by side."""
    rows = result["curves"]["context"]
    if not rows:
        return []
    r = rows[-1]
    n = r["context_tokens"]
    ex = r["configs"].get("exact", {})
    out = [
        (f"At {n} context tokens, exact warm time to first token is {_ratio(ex.get('warm_ram_s'), r['full_prefill_s'])}"
         f" of a full prefill from RAM and {_ratio(ex.get('warm_disk_s'), r['full_prefill_s'])} from disk in a fresh "
         f"process ({_fmt_s(ex.get('warm_ram_s'))} and {_fmt_s(ex.get('warm_disk_s'))} vs "
         f"{_fmt_s(r['full_prefill_s'])}); the question alone takes {_fmt_s(r['question_only_s'])}."),
        (f"transformers prompt reuse (deepcopy of the cache per query) takes {_fmt_s(r['prompt_reuse_s'])}: "
         f"exact warm RAM is {_ratio(ex.get('warm_ram_s'), r['prompt_reuse_s'])} of it, and unlike it survives a "
         f"restart and reuses documents that are not a shared prefix."),
        (f"Exact cold is {_ratio(ex.get('cold_s'), r['full_prefill_s'])} of a full prefill (paid once per document)."),
    ]
    beacons = [c for c in result["configs"] if c.startswith("beacon")]
    if beacons:
        parts = [f"r{c[len('beacon-r'):]}: {_ratio(r['configs'][c]['warm_ram_s'], r['full_prefill_s'])} warm, "
                 f"{_ratio(r['configs'][c]['cold_s'], r['full_prefill_s'])} cold" for c in beacons]
        out.append(f"Beacon at {n} tokens, as a share of a full prefill: " + "; ".join(parts) + ".")
    return out


def memory_markdown(result: dict[str, Any], plots_rel: str) -> str:
    lines = [(f"### Memory ({result['context_tokens']} context tokens in {result['documents']} documents of "
              f"{result['tokens_per_document']} tokens)"), "",
             ("Peak RSS: the process's resident high-water mark during one cold request, reset just before it "
              f"({'each configuration in its own fresh process' if result.get('separate_processes') else 'one process'}"
              "); the added figure is above the resident set after the model load. Documents in a 1 GB RAM tier: a "
              "real `MemoryTier` of 1 GiB filled with copies of a document's entry until it evicts."), ""]
    head = ["configuration", "KV bytes / context token", "vs full", "peak RSS (cold request)",
            "peak added by the request", "disk bytes per document", "documents in a 1 GB RAM tier"]
    full = result["full_kv_bytes_per_token"]
    lines += markdown_table(head, [[
        r["config"], f"{r['kv_bytes_per_token']:,.0f}", _ratio(r["kv_bytes_per_token"], full),
        _fmt_bytes(r.get("peak_rss_bytes")), _fmt_bytes(r.get("peak_added_bytes")),
        _fmt_bytes(r.get("disk_bytes_per_document")),
        f"{r['documents_in_1gb_ram_tier']:,}" if r.get("documents_in_1gb_ram_tier") is not None else "-",
    ] for r in result["configs"]])
    lines += ["", f"![memory]({plots_rel}/memory.png)", ""]
    return "\n".join(lines)


def throughput_markdown(result: dict[str, Any], plots_rel: str) -> str:
    lines = [(f"### Throughput: {result['queries']} RAG queries, {result['docs_per_query']} documents each drawn "
             f"Zipf(s={result['zipf_s']}) over {result['corpus_documents']} documents of "
             f"{result['tokens_per_document']} tokens, {result['answer_tokens']} answer tokens"), ""]
    head = ["configuration", "queries/s", "vs plain", "TTFT p50", "TTFT p95", "document hit rate", "token hit rate"]
    base = next((r["qps"] for r in result["configs"] if r["config"] == "plain"), None)
    lines += markdown_table(head, [[
        r["config"], f"{r['qps']:.3f}", _ratio(r["qps"], base) if base else "-", _fmt_s(r["ttft_p50_s"]),
        _fmt_s(r["ttft_p95_s"]), f"{r['document_hit_rate']:.2f}", f"{r['token_hit_rate']:.2f}",
    ] for r in result["configs"]])
    lines += ["", f"![throughput]({plots_rel}/throughput.png)", ""]
    return "\n".join(lines)


def peers_markdown(results: dict[str, Any]) -> str | None:
    """Part 3 (quality vs kvpress / llmlingua) lives in ``bench.peers``; optional here."""
    if "peers" not in results:
        return None
    try:
        from beacon_rag.bench import peers  # type: ignore[attr-defined]
    except ImportError as err:
        logger.warning("peers.json present but beacon_rag.bench.peers is not importable: %s", err)
        return None
    render = getattr(peers, "render_markdown", None)
    return render(results["peers"]) if callable(render) else None


def render_markdown(results: dict[str, Any], plots_rel: str = "benchmarks/plots") -> str:
    """The README results section: settings, headlines (ratios), tables and plots."""
    lines = [("<!-- generated by `python -m beacon_rag.bench.report` from benchmarks/results/*.json; "
              "do not edit by hand -->"), ""]
    first = next((results[k] for k in ("scaling", "memory", "throughput") if k in results), None)
    if first is None:
        return "\n".join(lines + ["No suite results yet: run `bash benchmarks/run_all.sh`.", ""])
    run_all = results.get("run_all", {})
    setting = run_all.get("setting") or first.get("setting")
    flag = {"small": " --small", "medium": " --medium"}.get(str(setting), "")
    parts = ", ".join(f"{name} {results[name]['duration_s'] / 60:.1f} min" for name in ("scaling", "memory", "throughput")
                      if name in results and results[name].get("duration_s"))
    took = f"; `bash benchmarks/run_all.sh{flag}` took {run_all['duration_s'] / 60:.1f} min" \
        if run_all.get("duration_s") else ""
    lines.append(f"Model **{first['model']}** (fp32); machine: {machine_line(first['machine'])}. "
                 f"Setting: `{setting}`{took} ({parts})"
                 + (f"; {run_all['note']}" if run_all.get("note") else "")
                 + ". Timings are best of N within one run; every ratio below compares two figures of that run.")
    lines.append("")
    headlines: list[str] = []
    if "scaling" in results:
        headlines += scaling_headlines(results["scaling"])
    if "memory" in results:
        mem = results["memory"]
        by = {r["config"]: r for r in mem["configs"]}
        smallest = min(mem["configs"], key=lambda r: r["kv_bytes_per_token"])
        if "exact" in by and smallest["config"] != "exact":
            headlines.append(
                f"{smallest['config']} stores {_ratio(smallest['kv_bytes_per_token'], by['exact']['kv_bytes_per_token'])}"
                f" of the exact KV bytes per token: {smallest.get('documents_in_1gb_ram_tier', 0):,} documents of "
                f"{mem['tokens_per_document']} tokens fit a 1 GB RAM tier instead of "
                f"{by['exact'].get('documents_in_1gb_ram_tier', 0):,}.")
    if "throughput" in results:
        tp = results["throughput"]
        base = next((r for r in tp["configs"] if r["config"] == "plain"), None)
        exact = [r for r in tp["configs"] if r["config"].startswith("exact")]
        if base and exact:
            parts = [f"{r['config']} {r['qps'] / base['qps']:.2f}x (document hit rate {r['document_hit_rate']:.2f}, "
                     f"TTFT p50 {_ratio(r['ttft_p50_s'], base['ttft_p50_s'])} of plain's)" for r in exact]
            lossy = [f"{r['config']} {r['qps'] / base['qps']:.2f}x" for r in tp["configs"]
                     if r is not base and r not in exact]
            headlines.append(f"On a Zipf stream of {tp['queries']} RAG queries (configurations interleaved query by "
                             f"query), queries per second relative to plain full prefill: " + "; ".join(parts)
                             + (f"; lossy: {', '.join(lossy)}" if lossy else "")
                             + ". `-independent` reuses documents in any order but is approximate (see placement).")
    if headlines:
        lines += ["**Headlines** (ratios within one run):", ""] + [f"- {h}" for h in headlines] + [""]
    if "scaling" in results:
        s = results["scaling"]
        beacon = s.get("beacon") or {}
        if beacon:
            lines.append(f"Beacon runs use the shipped plug-in ({'untrained' if beacon.get('untrained') else 'trained'}"
                         f", window {beacon.get('window')}, plug-in digest {str(beacon.get('plugin'))[:12]}); "
                         "it was trained at ratios 2/4/8, so r16 is outside its training. These tables measure "
                         "speed and size only; answer quality is measured separately.")
            lines.append("")
        lines.append(scaling_markdown(s, plots_rel))
    if "memory" in results:
        lines.append(memory_markdown(results["memory"], plots_rel))
    if "throughput" in results:
        lines.append(throughput_markdown(results["throughput"], plots_rel))
    peers_md = peers_markdown(results)
    if peers_md:
        if not peers_md.lstrip().startswith("#"):
            lines += ["### Quality at matched kept-slot budgets (`beacon-rag bench peers`, peers.json)", ""]
        lines += [peers_md, ""]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme: Path, section: str) -> bool:
    """Replace the text between the markers; refuse (False) when they are missing or out of order."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        logger.error("%s has no %s ... %s markers; README left as it was", readme, README_START, README_END)
        return False
    new = pattern.sub(lambda _: f"{README_START}\n{section}{README_END}", text, count=1)
    if new != text:
        readme.write_text(new)
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    results_path = Path(args.results) if args.results else results_dir()
    plots = Path(args.plots) if args.plots else REPO_ROOT / "benchmarks" / "plots"
    results = load_results(results_path)
    written = write_plots(results, plots)
    section = render_markdown(results, plots_rel=args.plots_rel or _relative(plots, REPO_ROOT))
    readme_updated = False
    if args.readme:
        readme_updated = update_readme(Path(args.readme), section)
        if not readme_updated:
            raise SystemExit(f"error: {args.readme} lacks the {README_START} / {README_END} markers")
    if args.markdown:
        Path(args.markdown).write_text(section)
    return {"results": sorted(results), "plots": [str(p) for p in written], "readme_updated": readme_updated,
            "markdown_chars": len(section)}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None, help=f"results folder (default ${RESULTS_ENV} or "
                        "benchmarks/results)")
    parser.add_argument("--plots", default=None, help="plots folder (default benchmarks/plots)")
    parser.add_argument("--plots-rel", default=None, help="how the markdown links the plots folder")
    parser.add_argument("--readme", default=None, help="README to update between the bench:results markers")
    parser.add_argument("--markdown", default=None, help="also write the section to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON line")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.report", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
