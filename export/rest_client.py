"""Example TF Serving REST client for a model exported by ``python -m tfpose.export``.

    python export/rest_client.py --url http://localhost:8501/v1/models/quickstart:predict \\
        image.jpg [more.png ...]

Each image file is sent as it is (JPEG, PNG, BMP or GIF, any size, grayscale or RGBA included)
to the ``image_bytes`` signature, base64-encoded in a ``{"b64": ...}`` object as the TF Serving
REST API expects for binary strings. The model letterboxes and decodes inside its graph and
answers poses in the image's own pixels; this script prints one JSON line per image:
``{"image": ..., "num_people": n, "people": [{"score": s, "keypoints": [[x, y, score], ...]}]}``.

Only the Python standard library is used, so the client runs where tfpose and TensorFlow are
not installed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

SIGNATURE = "image_bytes"


def build_request(image_path) -> dict:
    """The TF Serving predict request (REST, row format) for one image file.

    Returns:
        ``{"signature_name": "image_bytes", "instances": [{"b64": "<base64 of the file>"}]}``.
    """
    with open(image_path, "rb") as f:
        data = f.read()
    return {"signature_name": SIGNATURE,
            "instances": [{"b64": base64.b64encode(data).decode("ascii")}]}


def post(url: str, body: dict, timeout: float = 60.0) -> dict:
    """POSTs a JSON request and returns the decoded JSON response."""
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def people(prediction: dict) -> list:
    """The people of one prediction (rows past ``num_people`` dropped)."""
    n = int(prediction["num_people"])
    return [{"score": prediction["scores"][i], "keypoints": prediction["keypoints"][i]}
            for i in range(n)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True,
                        help="predict URL, e.g. http://localhost:8501/v1/models/NAME:predict")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("images", nargs="+", help="image files")
    args = parser.parse_args(argv)
    for path in args.images:
        try:
            body = build_request(path)
        except OSError as e:
            print(f"error: {path}: {e.strerror or e}", file=sys.stderr)
            return 2
        try:
            answer = post(args.url, body, args.timeout)
        except urllib.error.HTTPError as e:  # TF Serving explains the problem in the body
            detail = e.read().decode("utf-8", "replace").strip().replace("\n", " ")
            print(f"error: {path}: HTTP {e.code} from {args.url}: {detail[:300]}",
                  file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as e:
            print(f"error: {args.url}: {getattr(e, 'reason', e)}", file=sys.stderr)
            return 1
        prediction = answer["predictions"][0]
        found = people(prediction)
        print(json.dumps({"image": path, "num_people": len(found), "people": found}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
