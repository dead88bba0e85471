"""The fast eval transform (libjpeg-turbo + OpenCV) against the reference (mbv3.numpy_preprocess,
itself tested against TensorFlow): within one 8-bit level on every kind of image, every EXIF
orientation, and the same errors, the pixel limit checked before decoding; and both paths' refusals
of hostile images (scan and chunk floods, formats the API does not read) before any decoding."""
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from mbv3 import fast_preprocess, numpy_preprocess
from mbv3.errors import ImageError, ImageTooLarge
from mbv3.bundle import Preprocessing

LEVEL = 2.0 / 255   # one 8-bit level in model-input units ([-1, 1])


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size=(333, 250)):
    """A smooth, photo-like RGB image (gradients and a disc), so JPEG keeps it close to itself."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = np.where((x - w / 2) ** 2 + (y - h / 3) ** 2 < (min(w, h) / 4) ** 2, 230, 40)
    return Image.fromarray(np.stack([r, g, b], axis=2).astype(np.uint8))


def _reference(data, prep, normalize=True):
    return numpy_preprocess.eval_transform(numpy_preprocess.decode(data), prep=prep, normalize=normalize)


def _cases():
    photo = _photo()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (97, 61, 3), dtype=np.uint8))
    sixteen = Image.fromarray((np.linspace(0, 65535, 120 * 90).reshape(90, 120)).astype(np.uint16))
    return {
        "photo.jpg": _encode(photo, "JPEG", quality=90),
        "photo-444-progressive.jpg": _encode(photo, "JPEG", quality=95, subsampling=0, progressive=True),
        "noise.jpg": _encode(noise, "JPEG", quality=90),
        "noise.png": _encode(noise, "PNG"),
        "gray.jpg": _encode(photo.convert("L"), "JPEG"),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "palette.png": _encode(photo.convert("P"), "PNG"),
        "rgba.webp": _encode(photo.convert("RGBA"), "WEBP", lossless=True),
        "sixteen-bit.png": _encode(sixteen, "PNG"),
        "wide.jpg": _encode(_photo((1000, 30)), "JPEG"),
        "tall.png": _encode(_photo((1, 500)), "PNG"),
        "exact-half.jpg": _encode(_photo((512, 512)), "JPEG"),
        "one-pixel.png": _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "two-pictures.mpo": _encode(photo, "MPO", save_all=True, append_images=[noise.resize(photo.size)]),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("size", [[224, 224], [64, 96]])
def test_within_one_level_of_the_reference(name, size):
    data, prep = _cases()[name], Preprocessing(size=size)
    ours, ref = fast_preprocess.model_input(data, prep), _reference(data, prep)
    assert ours.shape == ref.shape == (size[0], size[1], 3) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= LEVEL + 1e-6
    pixels = fast_preprocess.model_input(data, prep, normalize=False)
    assert pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - _reference(data, prep, normalize=False)).max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_exif_orientation_is_pillows(orientation, mode):
    img = _photo((300, 200)).convert(mode)
    exif = img.getexif()
    exif[numpy_preprocess.EXIF_ORIENTATION] = orientation
    data = _encode(img, "JPEG", exif=exif)
    prep = Preprocessing(size=[64, 96])   # not square, so a turn the wrong way changes the shape
    ours, ref = fast_preprocess.model_input(data, prep), _reference(data, prep)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= LEVEL + 1e-6


def test_errors_are_the_references():
    good = _encode(_photo(), "JPEG")
    for data, kind, match in ((b"", ImageError, "empty"),
                              (b"plain text", ImageError, "not an image"),
                              (good[:300], ImageError, "cannot decode")):
        with pytest.raises(kind, match=match):
            fast_preprocess.model_input(data)
    with pytest.raises(ImageTooLarge, match="over the limit of 1000"):
        fast_preprocess.model_input(good, max_pixels=1000)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_pixel_limit_is_checked_from_the_header():
    """A 16-pixel JPEG whose frame header claims 10000 x 10000: refused before any decoding."""
    data = bytearray(_encode(Image.new("RGB", (4, 4)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 10000, 10000)
    with pytest.raises(ImageTooLarge):
        fast_preprocess.model_input(bytes(data), max_pixels=40_000_000)
    assert fast_preprocess.probe(bytes(data)) == (10000, 10000, "JPEG RGB")


def test_probe_names_what_decodes_the_image():
    assert fast_preprocess.probe(_cases()["photo.jpg"])[2] == "JPEG RGB"
    assert fast_preprocess.probe(_cases()["gray.jpg"])[2] == "JPEG L"
    assert fast_preprocess.probe(_cases()["cmyk.jpg"])[2] == "CMYK"
    assert fast_preprocess.probe(_cases()["two-pictures.mpo"])[2] == "JPEG RGB"   # the first picture, by libjpeg
    assert fast_preprocess.probe(_cases()["noise.png"]) == (61, 97, "RGB")


def test_select():
    assert fast_preprocess.select("fast")[0] is fast_preprocess.model_input
    assert fast_preprocess.select("auto")[0] is fast_preprocess.model_input   # both are installed here
    assert fast_preprocess.select("reference")[0] is fast_preprocess.reference_input
    with pytest.raises(ValueError, match="choose one of"):
        fast_preprocess.select("turbo")


def test_probe_jpeg_is_probe_for_jpegs_and_none_otherwise():
    cases = _cases()
    for name in ("photo.jpg", "gray.jpg", "cmyk.jpg", "wide.jpg", "photo-444-progressive.jpg", "two-pictures.mpo"):
        assert fast_preprocess.probe_jpeg(cases[name]) == fast_preprocess.probe(cases[name]), name
    for data in (cases["noise.png"], cases["rgba.webp"], b"", b"\xff\xd8 not really a JPEG", cases["photo.jpg"][:2]):
        assert fast_preprocess.probe_jpeg(data) is None


def test_results_never_share_the_reused_decoding_buffer():
    cases = _cases()
    first = fast_preprocess.model_input(cases["photo.jpg"])
    kept = first.copy()
    pixels = fast_preprocess.model_input(cases["noise.jpg"], normalize=False)
    kept_pixels = pixels.copy()
    fast_preprocess.model_input(cases["gray.jpg"])
    fast_preprocess.model_input(cases["exact-half.jpg"], normalize=False)
    assert np.array_equal(first, kept) and np.array_equal(pixels, kept_pixels)


# --- hostile images: refused from their bytes, before any decoding, on both paths ------------------
# every function a caller hands upload bytes to (probe_jpeg is tested on its own: it answers None)
ENTRY_POINTS = {"header": numpy_preprocess.header, "decode": numpy_preprocess.decode, "probe": fast_preprocess.probe,
                "model_input": fast_preprocess.model_input, "reference_input": fast_preprocess.reference_input}
QUICK = 0.5   # seconds: each refusal takes about 1-3 ms; generous for a noisy machine


def _refused(data, match, kind=ImageError):
    for name, function in ENTRY_POINTS.items():
        start = time.perf_counter()
        with pytest.raises(kind, match=match):
            function(data)
        assert time.perf_counter() - start < QUICK, name


def _jpeg_scans(width, height, repeat=1):
    """A valid progressive JPEG of 1 + 378 * repeat scans: Pillow's header and DC scan, then for each
    component and AC coefficient a first scan and a refinement scan (Ss = Se = k), each one run of
    empty blocks (EOBr). With repeat > 1 the scans repeat (libjpeg warns of a bogus progression
    and decodes on, a pass over every block per scan: the attack's shape)."""
    data = _encode(Image.new("RGB", (width, height), (120, 60, 200)), "JPEG", progressive=True, subsampling=0)
    pos = 2
    while data[pos + 1] != 0xDA:   # the segments up to the first scan
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    while not (data[pos] == 0xFF and data[pos + 1] != 0 and not 0xD0 <= data[pos + 1] <= 0xD7):
        pos += 1   # the DC scan's entropy-coded data
    blocks = -(-width // 8) * -(-height // 8)
    run = blocks.bit_length() - 1
    # AC table 0: one symbol, EOBrun, coded "0"; then its `run` extra bits, padded with ones
    dht = b"\xff\xc4" + struct.pack(">HB", 20, 0x10) + bytes([1] + [0] * 15) + bytes([run << 4])
    bits = "0" + (format(blocks - (1 << run), "0%db" % run) if run else "")
    bits += "1" * (-len(bits) % 8)
    coded = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    scans = b"".join(b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, component, 0, k, k, (ah << 4) | al) + coded
                     for component in (1, 2, 3) for k in range(1, 64) for ah, al in ((0, 1), (1, 0)))
    return data[:pos] + dht + scans * repeat + b"\xff\xd9"


def _png_chunk(kind, body=b""):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(chunks, size=(8, 8)):
    """A Pillow-written PNG with `chunks` inserted before its image data."""
    data = _encode(Image.new("RGB", size, (10, 200, 30)), "PNG")
    idat = data.index(b"IDAT") - 4
    return data[:idat] + chunks + data[idat:]


def test_a_jpeg_of_too_many_scans_is_refused_and_decodes_under_a_higher_limit(monkeypatch):
    data = _jpeg_scans(64, 64)
    assert data.count(b"\xff\xda") == 379
    _refused(data, "^progressive JPEG of 379 scans, over the limit of 100$")
    assert fast_preprocess.probe_jpeg(data) is None   # probe() (on the caller's pool) says why
    monkeypatch.setattr(numpy_preprocess, "MAX_JPEG_SCANS", 1000)   # the limit, nothing else, refused it
    assert fast_preprocess.probe_jpeg(data) == fast_preprocess.probe(data) == (64, 64, "JPEG RGB")
    rgb = numpy_preprocess.decode(data)
    assert rgb.shape == (64, 64, 3) and np.abs(rgb.astype(int) - (120, 60, 200)).max() <= 2
    assert fast_preprocess.model_input(data).shape == (224, 224, 3)


def test_scans_are_counted_like_the_two_byte_search_across_chunks(monkeypatch):
    """jpeg_scans counts FF DA pairs with NumPy a chunk at a time: the same count as bytes.count,
    a marker split across two chunks counted once, whatever the chunk size."""
    rng = np.random.default_rng(5)
    samples = [b"", b"\xff", b"\xda", b"\xff\xda", b"\xda\xff", b"\xff\xff\xda\xda\xff\xda"] + [
        bytes(rng.choice(np.frombuffer(b"\xff\xda\x00", np.uint8), rng.integers(0, 60))) for _ in range(300)]
    for chunk in (1, 2, 3, 7, numpy_preprocess.SCAN_COUNT_CHUNK):
        monkeypatch.setattr(numpy_preprocess, "SCAN_COUNT_CHUNK", chunk)
        for data in samples:
            assert numpy_preprocess.jpeg_scans(data) == data.count(b"\xff\xda"), (chunk, data)
        assert numpy_preprocess.jpeg_scans(memoryview(b"a\xff\xdab")) == 1


def test_a_scan_flood_is_refused_in_milliseconds():
    """The attack's shape: 1000x1000, ~100,000 scans of EOB runs in 1.2 MB, ~11 s to decode."""
    data = _jpeg_scans(1000, 1000, repeat=265)
    assert 1_000_000 < len(data) < 2_000_000
    _refused(data, "^progressive JPEG of 100171 scans, over the limit of 100$")
    start = time.perf_counter()
    assert fast_preprocess.probe_jpeg(data) is None
    assert time.perf_counter() - start < QUICK


def test_ordinary_progressive_jpegs_are_far_under_the_scan_limit():
    for subsampling in (0, 2):
        data = _encode(_photo(), "JPEG", progressive=True, subsampling=subsampling)
        assert data.count(b"\xff\xda") <= 12
        assert numpy_preprocess.header(data)[:2] == (333, 250)


def test_a_png_of_too_many_chunks_is_refused(monkeypatch):
    data = _png_with(_png_chunk(b"xxXx") * 10000 + _png_chunk(b"tEXt", b"k\0v") * 10000)
    _refused(data, "^PNG of 10001 or more chunks, over the limit of 10000$")
    monkeypatch.setattr(numpy_preprocess, "MAX_PNG_CHUNKS", 30000)   # a valid PNG: the limit refused it
    assert tuple(numpy_preprocess.decode(data)[0, 0]) == (10, 200, 30)


def test_the_chunk_walk_is_bounded():
    flood = _png_with(_png_chunk(b"xxXx") * 500_000)   # 6 MB
    start = time.perf_counter()
    assert numpy_preprocess.png_chunks(flood, 10001) == 10001
    assert time.perf_counter() - start < QUICK
    assert numpy_preprocess.png_chunks(_png_with(b""), 10001) == 3   # IHDR IDAT IEND, and no further
    assert numpy_preprocess.png_chunks(_png_with(b"") + b"junk after IEND" * 1000, 10001) == 3


def test_a_large_ordinary_png_is_accepted():
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 255, (2000, 2000, 3), dtype=np.uint8))
    data = _encode(noise, "PNG")
    assert 12 < numpy_preprocess.png_chunks(data, 10001) < 1000
    assert fast_preprocess.probe(data) == (2000, 2000, "RGB")
    assert fast_preprocess.model_input(data).shape == (224, 224, 3)


def _ico_holding(png):
    """An ICO whose one entry says 256x256 (0) but holds `png` (Pillow decodes it in Image.open)."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_formats_the_api_does_not_read_are_refused_unopened(monkeypatch):
    from PIL import IcoImagePlugin, TiffImagePlugin

    def opened(*args, **kwargs):
        raise AssertionError("a plugin outside FORMATS read the upload")
    monkeypatch.setattr(IcoImagePlugin.IcoFile, "__init__", opened)
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_open", opened)
    big = _encode(Image.new("1", (13376, 13376)), "PNG")   # ~179 megapixels in 22 KB: 1.9 GB to decode
    tiff = _encode(Image.new("RGB", (16, 16)), "TIFF")
    for data in (_ico_holding(big), tiff, _encode(Image.new("RGB", (16, 16)), "PPM")):
        _refused(data, r"^not an image in a format the service reads \(JPEG, PNG, WebP, BMP or GIF\)$")
        assert fast_preprocess.probe_jpeg(data) is None


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_bomb_guard_speaks_the_apis_terms():
    """A PNG header claiming 20000 x 20000: Pillow's own guard fires in Image.open."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    data = numpy_preprocess.PNG_SIGNATURE + ihdr + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND")
    for name, function in ENTRY_POINTS.items():
        with pytest.raises(ImageTooLarge) as raised:
            function(data)
        assert str(raised.value) == "image is 400000000 pixels, over the limit of %d" % (2 * Image.MAX_IMAGE_PIXELS), name
    with pytest.raises(ImageTooLarge, match="^image is 400000000 pixels, over the limit of 1000$"):
        fast_preprocess.model_input(data, max_pixels=1000)


def test_pngs_text_limits_speak_the_apis_terms():
    from PIL import PngImagePlugin
    ztxt = _png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b" " * (PngImagePlugin.MAX_TEXT_CHUNK + 1)))
    for name, function in ENTRY_POINTS.items():
        with pytest.raises(ImageError) as raised:
            function(_png_with(ztxt))
        assert str(raised.value).endswith("a text chunk of the PNG is over %d bytes" % PngImagePlugin.MAX_TEXT_CHUNK), name
        assert "MAX_" not in str(raised.value) and "Plugin" not in str(raised.value)


def test_only_an_animations_first_frame_is_decoded():
    frames = [Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(200)]
    apng = _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    gif = _encode(frames[0].convert("P"), "GIF", save_all=True, append_images=[f.convert("P") for f in frames[1:]])
    for data in (apng, gif):
        assert tuple(numpy_preprocess.decode(data)[5, 5]) == (0, 0, 0)


def test_header_floods_pillow_would_parse_in_python_are_refused():
    jpeg = _encode(_photo(), "JPEG")
    gif = _encode(_photo().convert("P"), "GIF")
    image = 13 + (3 << ((gif[10] & 7) + 1))   # the first image descriptor, after the global colour table
    assert gif[image] == 0x2C
    for data, match in ((jpeg[:2] + b"\xff\xfe\x00\x02" * 20000 + jpeg[2:], "^JPEG header of 10001 or more segments"),
                        (jpeg[:2] + b"\xff\xe5\x00\x02" * 20000 + jpeg[2:], "^JPEG header of 10001 or more segments"),
                        (gif[:image] + b"!\xfe\x00" * 20000 + gif[image:], "^GIF of 10001 or more blocks"),
                        (gif[:image] + b"!\xfe" + b"\x01x" * 20000 + b"\x00" + gif[image:], "^GIF of 10001 or more blocks")):
        _refused(data, match)
    with_exif = _photo()
    exif = with_exif.getexif()
    exif[numpy_preprocess.EXIF_ORIENTATION] = 6
    icc = bytes(range(256)) * 2000   # 512 KB: split over 8 APP2 segments
    for data in (_encode(with_exif, "JPEG", exif=exif, icc_profile=icc, progressive=True), gif,
                 _encode(_photo().convert("P"), "GIF", comment=b"c" * 5000)):
        assert numpy_preprocess.jpeg_header_steps(data, 10001) < 30 or data[:3] == b"GIF"
        assert numpy_preprocess.gif_header_steps(data, 10001) < 100 or data[:2] == b"\xff\xd8"
        numpy_preprocess.decode(data)


def test_a_run_length_bmp_is_refused_before_pillow_decodes_it():
    """Pillow decodes RLE8/RLE4 BMPs in Python: refused from the header's compression field."""
    width = height = 4000
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, 0, 2835, 2835, 256, 0)
    palette = bytes(4 * 256)
    pixels = b"\x01\x00" * 1000 + b"\x00\x01"   # 1-pixel runs, then end of bitmap
    offset = 14 + len(info) + len(palette)
    data = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels
    for read in (numpy_preprocess.header, numpy_preprocess.decode, fast_preprocess.model_input):
        with pytest.raises(ImageError, match="run-length-encoded BMP"):
            read(data)
