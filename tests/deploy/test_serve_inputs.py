"""`cnn serve`'s reading of TF Serving bodies: the flat reading of plain pixel arrays must give exactly what the
general reader gives, pixels or refusal, whatever the body.

No server here (and no extra needed): these are the functions every predict request goes through.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.deploy.serve_inputs import RequestError, instances_to_pixels, read_instances

VIEW = ("L", (2, 2))  # only b64 pictures use it; these bodies hold none


def outcome(read, body: bytes, shape: tuple[int, ...]):
    """('pixels', dtype, shape, bytes) or ('refused', status, message): what a reader makes of a body."""
    try:
        x = read(body, shape, VIEW)
    except RequestError as exc:
        return ("refused", exc.status, exc.message)
    return ("pixels", x.dtype, x.shape, x.tobytes())


numbers = st.one_of(
    st.integers(0, 255),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)


@st.composite
def bodies(draw):
    """A model input shape and a body for it: the right shape, or near it, written in any JSON style."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    n = draw(st.integers(1, 3))
    sent = draw(st.sampled_from([(n, *shape), (n, *shape[:-1], shape[-1] + 1), (n, *shape, 1), shape]))
    values = np.array(draw(st.lists(numbers, min_size=int(np.prod(sent)), max_size=int(np.prod(sent)))), object)
    doc = {"instances": values.reshape(sent).tolist()}
    text = json.dumps(
        doc,
        indent=draw(st.sampled_from([None, 0, 2])),
        separators=draw(st.sampled_from([None, (",", ":"), (" ,", " : ")])),
    )
    if draw(st.booleans()):  # and a one-character slip: a bracket, comma, digit, sign or space more or less
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()) and at < len(text):
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + draw(st.sampled_from(list("[],0-.e ") + ["NaN", '"x"'])) + text[at:]
    return shape, text.encode()


@settings(max_examples=400, deadline=None)
@given(bodies())
def test_the_flat_reading_gives_what_the_general_reader_gives(case):
    shape, body = case
    assert outcome(instances_to_pixels, body, shape) == outcome(read_instances, body, shape)


def test_a_plain_batch_is_read_flat_into_the_model_shape():
    images = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
    body = json.dumps({"instances": images.astype(int).tolist()}).encode()
    x = instances_to_pixels(body, (3, 4, 1), VIEW)
    assert x.dtype == np.float32 and x.shape == (2, 3, 4, 1) and np.array_equal(x, images)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("1e999", "instances[0]: pixel values must be finite float32 numbers, got inf"),
        ("1" + "0" * 400, "instances[0]: pixel values must be finite float32 numbers, got an integer too large"),
        ("NaN", "instances[0]: pixel values must be finite float32 numbers, got nan"),
    ],
)
def test_numbers_beyond_float32_are_refused_with_the_instance_named(value, fragment):
    body = b'{"instances": [[[0], [' + value.encode() + b"]]]}"
    with pytest.raises(RequestError) as refused:
        instances_to_pixels(body, (2, 1), VIEW)
    assert refused.value.status == 400 and refused.value.message == fragment
