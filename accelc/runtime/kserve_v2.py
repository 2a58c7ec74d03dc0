"""KServe v2 / Open Inference Protocol (HTTP/REST) for `accelc serve`, beside POST /predict.

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/1], .../ready and
POST .../infer with typed JSON tensors. A request runs the same path as /predict (Service.run: the
body limits, the Decoder's checks, the predictor pool, micro-batching); only the JSON around the
arrays differs. One model per server: its name is the manifest's "name", its one version "1".

Errors are the protocol's {"error": "E803: message"}: 400 for a bad request (413, 408 as on
/predict), 404 for an unknown model or version. Not supported, and refused with a 400 when asked
for: the binary tensor data extension (Inference-Header-Content-Length, binary_data_size), shared
memory, classification. A request for binary outputs (binary_data, binary_data_output, which
tritonclient sends by default) is answered in JSON, which the protocol's clients read as well.
"""
from __future__ import annotations

import math

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from accelc import __version__
from accelc.artifact.manifest import TensorSpec
from accelc.errors import AccelcError, InputError, did_you_mean
from accelc.runtime.codec import STATUS, jsonable, parse_json, rectangular

VERSION = "1"
# The protocol's tensor datatypes -> numpy dtype names (BYTES and BF16 have none an artifact takes).
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
             "FP32": "float32", "FP64": "float64", "BYTES": None, "BF16": None}
NAMES = {dtype: name for name, dtype in DATATYPES.items() if dtype}
REQUEST_KEYS, INPUT_KEYS, OUTPUT_KEYS = {"id", "parameters", "inputs", "outputs"}, {
    "name", "shape", "datatype", "data", "parameters"}, {"name", "parameters"}


def datatype(dtype: str) -> str:
    """The protocol's name of a numpy dtype ("float32" -> "FP32")."""
    return NAMES.get(str(dtype), str(dtype).upper())


def tensor_metadata(spec: TensorSpec) -> dict:
    """An input or output of the manifest as the protocol describes it: -1 for the batch dimension."""
    return {"name": spec.name, "datatype": datatype(spec.dtype), "shape": [-1 if d is None else d for d in spec.dims]}


def _bad(message: str, code: str = "E811", hint: str | None = None) -> InputError:
    return InputError(message, code=code, hint=hint)


class V2:
    """The v2 endpoints and codec of one Service (decode: body -> arrays, encode: outputs -> body)."""

    def __init__(self, service):
        self.service = service
        self.decoder = service.decoder
        self.name = service.predictor.manifest.name
        self.output_names = [spec.name for spec in service.predictor.outputs]
        self.output_types = [datatype(spec.dtype) for spec in service.predictor.outputs]
        self.model = {"name": self.name, "versions": [VERSION], "platform": "accelc",
                      "inputs": [tensor_metadata(s) for s in service.predictor.inputs],
                      "outputs": [tensor_metadata(s) for s in service.predictor.outputs]}

    def endpoints(self) -> list[tuple[str, object, str]]:
        """(path, handler, method) for each route; every model route also under /versions/{version}."""
        model = [("", self.model_metadata, "GET"), ("/ready", self.model_ready, "GET"), ("/infer", self.infer, "POST")]
        return [("/v2", self.server_metadata, "GET"), ("/v2/health/live", self.live, "GET"),
                ("/v2/health/ready", self.live, "GET"),
                *[(f"/v2/models/{{name}}{version}{tail}", handler, method) for version in ("", "/versions/{version}")
                  for tail, handler, method in model]]

    # ---- endpoints ------------------------------------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "accelc", "version": __version__, "extensions": []})

    async def live(self, request: Request) -> Response:
        """Live and ready alike: the app exists only once its artifact is loaded. 200, empty body."""
        return Response(status_code=200)

    async def model_metadata(self, request: Request) -> Response:
        return self.unknown(request) or JSONResponse(self.model)

    async def model_ready(self, request: Request) -> Response:
        return self.unknown(request) or Response(status_code=200)

    async def infer(self, request: Request) -> Response:
        if refused := self.unknown(request):
            return refused
        if "inference-header-content-length" in request.headers:
            return self.error(_bad("the binary tensor data extension is not supported: send each input's "
                                   "\"data\" as JSON"))
        return await self.service.run(request, self)

    def unknown(self, request: Request) -> Response | None:
        """404 for another model's name or version; None for this model."""
        name, version = request.path_params["name"], request.path_params.get("version", VERSION)
        if name != self.name:
            return self.error(_bad(f"unknown model {name!r}; this server serves {self.name!r}", "E813",
                                   did_you_mean(name, [self.name])))
        if version != VERSION:
            return self.error(_bad(f"model {self.name!r} has no version {version!r}; it has [{VERSION!r}]", "E813"))
        return None

    # ---- codec (Service.run calls these, in the predictor pool for large bodies) ----------------

    def decode(self, body: bytes) -> tuple[list[np.ndarray], int, tuple]:
        """Arrays in input order, batch rows, and what encode needs: (request id, output indices)."""
        request = parse_json(body)
        if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or set(request) - REQUEST_KEYS:
            raise _bad('the body must be a JSON object {"inputs": [{"name", "shape", "datatype", "data"}, ...]} '
                       'with optional "id", "outputs" and "parameters"')
        if not isinstance(request.get("id", ""), str):
            raise _bad('"id" must be a string')
        given: dict = {}
        for tensor in request["inputs"]:
            name, value = self._tensor(tensor)
            if name in given:
                raise _bad(f"input {name!r} is given twice", "E801")
            given[name] = value
        arrays, rows = self.decoder.arrays(self.decoder.by_name(given))
        return arrays, rows, (request.get("id"), self._wanted(request.get("outputs")))

    def _tensor(self, tensor) -> tuple[str, np.ndarray]:
        """One input tensor: its name and its data as an array of the declared shape (checks follow)."""
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor) <= INPUT_KEYS:
            raise _bad('each input must be an object {"name", "shape", "datatype", "data"} (and "parameters")')
        name, shape, kind = tensor["name"], tensor["shape"], tensor["datatype"]
        if not isinstance(name, str) or not isinstance(kind, str):
            raise _bad('an input\'s "name" and "datatype" must be strings')
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict) or {"binary_data_size", "shared_memory_region"} & set(parameters):
            raise _bad(f"input {name!r}: binary data and shared memory are not supported: send \"data\" as JSON")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape):
            raise _bad(f"input {name!r}: \"shape\" must be a list of non-negative integers, got {shape!r}", "E802")
        spec = next((s for s in self.decoder.inputs if s.name == name), None)
        if kind not in DATATYPES:
            raise _bad(f"input {name!r}: unknown datatype {kind!r}; the protocol's are {', '.join(DATATYPES)}",
                       "E803", did_you_mean(kind, DATATYPES))
        if spec is not None and DATATYPES[kind] != spec.dtype.name:
            raise _bad(f"input {name!r} takes datatype {datatype(spec.dtype.name)}, got {kind}", "E803")
        data = rectangular(f"input {name!r}", tensor["data"])  # flat row-major, or nested lists
        if data.size != math.prod(shape):
            raise _bad(f"input {name!r}: shape {shape} holds {math.prod(shape)} element(s), \"data\" has {data.size}",
                       "E802")
        return name, data.reshape(shape)

    def _wanted(self, outputs) -> list[int]:
        """Indices of the requested outputs, in the order asked; all when none are named."""
        if outputs is None:
            return list(range(len(self.output_names)))
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    and set(o) <= OUTPUT_KEYS for o in outputs):
            raise _bad('"outputs" must be a list of objects {"name"} (and "parameters")')
        wanted = []
        for output in outputs:
            name, parameters = output["name"], output.get("parameters") or {}
            if name not in self.output_names:
                raise _bad(f"unknown output {name!r}; the model gives {self.output_names}", "E801",
                           did_you_mean(name, self.output_names))
            if (not isinstance(parameters, dict) or parameters.get("classification")
                    or "shared_memory_region" in parameters):
                raise _bad(f"output {name!r}: classification and shared memory are not supported")
            wanted.append(self.output_names.index(name))
        return wanted

    def encode(self, outputs: list[np.ndarray], context: tuple) -> Response:
        request_id, wanted = context
        return JSONResponse({"model_name": self.name, "model_version": VERSION,
                             **({"id": request_id} if request_id is not None else {}),
                             "outputs": [{"name": self.output_names[i], "datatype": self.output_types[i],
                                          "shape": list(outputs[i].shape), "data": jsonable(outputs[i].reshape(-1))}
                                         for i in wanted]})

    def error(self, exc: AccelcError, headers: dict | None = None) -> Response:
        problem = exc.problems[0]
        message = f"{problem.code}: {problem.message}" + (f" ({problem.hint})" if problem.hint else "")
        response = JSONResponse({"error": message}, status_code=STATUS.get(problem.code, 400), headers=headers)
        response.error_code = problem.code  # for the metrics
        return response
