"""Baseline: a bare FastAPI endpoint that only reads the multipart upload (no decode, no model)."""

from fastapi import FastAPI, UploadFile

app = FastAPI()


@app.post("/score")
async def score(files: list[UploadFile]) -> dict[str, int]:
    sizes = [len(await f.read()) for f in files]
    return {"files": len(sizes), "bytes": sum(sizes)}
