"""`llmkit models`: the built-in aliases, converted GGUF caches, ONNX exports and Hugging Face cached models;
--remove/--clean."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.options import FormatOpt, JsonOpt, command_app

app = command_app()


@app.command("models")
def models(
    remove: Annotated[
        list[str] | None,
        typer.Option(
            "--remove",
            help="Delete this listed model (a converted GGUF cache, an ONNX export or a Hugging Face cache entry; "
            "repeatable).",
        ),
    ] = None,
    clean: Annotated[
        bool,
        typer.Option(
            "--clean",
            help="Delete every converted GGUF cache, every ONNX export and the temporaries of killed llmkit runs "
            "(the Hugging Face cache is left alone).",
        ),
    ] = False,
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """List the built-in models (installed or not), converted GGUF caches, ONNX exports and Hugging Face models.

    With --remove NAME or --clean: delete instead of listing, and say what went and the space it freed.

    Examples:

      llmkit models

      llmkit models --json | jq -r 'select(.installed) | .name'

      llmkit models --remove SmolLM2-135M-Instruct.Q4_1-3f2a9c0d1e2b4a5c

      llmkit models --clean
    """
    from llmkit import output

    fmt = output.resolve_format(fmt, json_out)
    if remove or clean:
        from dataclasses import asdict

        from llmkit import caches

        freed = [item for name in remove or [] for item in caches.remove(name)]
        if clean:
            freed += caches.clean()
        emitter = output.Emitter(fmt, text=lambda r: f"{r['kind']}\t{r['size_bytes']}\t{r['path']}")
        if fmt == "rich":
            console = output.stdout_console()
            for item in freed:
                what = "stale temporary of a killed run" if item.kind == "stale-temporary" else item.kind
                console.print(f"Removed {item.path} ({what}): {output.human_size(item.size_bytes)} freed", markup=False)
            total = sum(item.size_bytes for item in freed)
            console.print(f"{len(freed)} removed, {output.human_size(total)} freed" if freed else "Nothing to remove")
            return
        for item in freed:
            emitter.emit(asdict(item))
        return
    from llmkit.caches import listed
    from llmkit.console import info
    from llmkit.loading import LARGER_MODEL_HINT

    rows = listed()
    if fmt == "rich":
        output.stdout_console().print(output.models_table(rows))
        output.stdout_console().print(LARGER_MODEL_HINT, markup=False, highlight=False)
        return
    info(LARGER_MODEL_HINT)  # stdout stays data in a pipe
    emitter = output.Emitter(fmt, text=lambda r: f"{r['name']}\t{r['kind']}\t{r['path']}")
    for row in rows:
        emitter.emit(row)
