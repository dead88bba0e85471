"""What every image goes through, whichever protocol brought it: the request's limits, its
headers probed, its worst case held from the memory budget, preprocessing, the engine, and the
answer (top-k without the background class, per-stage timings). Both routers call one Pipeline,
so the two protocols cannot drift apart; they only read bodies and write answers.

The dependency runs one way: the pipeline gives the engine jobs (a pure function, its arguments, the
executor that runs it) or arrays, and the engine never calls the pipeline.
"""
from __future__ import annotations

import numpy as np

from mbv3.classify import softmax, top_k
from mbv3.errors import ImageError

from .errors import ApiError
from .images import Upload, image_error

STAGES = ("preprocess", "queue", "inference")


class Pipeline:
    def __init__(self, bundle, engine, images, budget, metrics, *, one_hop_max_pixels):
        """bundle: the served mbv3 Bundle; engine: the Engine; images: the Preprocessor (limits,
        probing, decoding pool); budget: the MemoryBudget; one_hop_max_pixels: the largest lone image
        the engine may decode on an idle device's thread (ONE_HOP_MAX_PIXELS; 0: never). Nothing is
        decoded on the event loop, so no image can stall the other connections."""
        self.engine, self.images, self.budget, self.metrics = engine, images, budget, metrics
        self.one_hop_max_pixels = one_hop_max_pixels
        self.labels = bundle.labels
        self.prep = bundle.preprocessing
        self.size = self.prep.size
        self.num_classes = bundle.num_classes
        self.background = bundle.background_index
        self.max_top_k = self.num_classes - (1 if self.background is not None else 0)

    @property
    def takes_pixels(self):
        """Whether the model takes uint8 pixels (an .om with AIPP normalises inside) rather than
        normalised float32: the backend says, once loaded."""
        return self.engine.input_dtype == np.uint8

    # --- encoded images -----------------------------------------------------------------------
    async def infer_uploads(self, uploads):
        """Probe, admit under the memory budget, preprocess and infer; each upload ends with
        .logits or .error. Raises ApiError for what fails the whole request (count, pixels, budget,
        queue)."""
        self.images.check_count(len(uploads))
        await self.images.probe(uploads)
        good = [u for u in uploads if u.error is None]
        self.images.check_pixels(good)
        what = "this image" if len(uploads) == 1 else "this request's %d images" % len(uploads)
        async with self.budget.hold(self.images.cost(good), what):
            uint8 = self.takes_pixels
            lone = len(uploads) == 1
            jobs = [self.images.job(u, uint8, one_hop=lone and u.pixels <= self.one_hop_max_pixels) for u in good]
            for upload, (outcome, timings) in zip(good, await self.engine.infer(jobs) if jobs else []):
                upload.timings.update(timings)
                if isinstance(outcome, ImageError):
                    upload.error = image_error(outcome)
                elif isinstance(outcome, ApiError):
                    upload.error = outcome
                elif isinstance(outcome, Exception):
                    raise outcome   # a bug, not the image: 500
                else:
                    upload.logits = outcome
        return uploads

    def result(self, upload, top_k_):
        """The JSON object for one classified upload (the background class is never a prediction)."""
        probs = softmax(upload.logits[np.newaxis].astype(np.float64))
        (best,) = top_k(probs, self.labels, top_k_, skip=self.background)
        timings = upload.timings
        for stage in STAGES:
            self.metrics.stage_latency.labels(stage).observe(timings.get(stage, 0.0))
        out = {"predictions": [{"label": label, "index": i, "score": score} for i, label, score in best],
               "timings_ms": {stage: round(timings.get(stage, 0.0) * 1000, 3) for stage in STAGES}}
        if upload.name is not None:
            out = dict({"filename": upload.name}, **out)
        return out

    async def infer_encoded(self, images):
        """float32 logits [N, classes] for N encoded images, all of them or an ApiError (a tensor
        API answers every row or none)."""
        uploads = await self.infer_uploads([Upload(data) for data in images])
        for upload in uploads:
            if upload.error is not None:
                raise upload.error
        return np.stack([u.logits for u in uploads]).astype(np.float32)

    # --- model inputs -------------------------------------------------------------------------
    async def infer_tensors(self, batch):
        """float32 logits [N, classes] for model inputs [N, H, W, 3] as the ONNX model takes them
        (normalised); for a model that takes pixels, the normalisation is undone first."""
        self.images.check_count(len(batch))
        async with self.budget.hold(self.images.tensors_cost(len(batch)), "this request's tensor"):
            batch = batch.astype(np.float32)
            if self.takes_pixels:
                batch = self.prep.denormalize(batch)
            rows = await self.engine.infer_many(list(batch))
        for row, _ in rows:
            if isinstance(row, Exception):
                raise row
        return np.stack([row for row, _ in rows]).astype(np.float32)
