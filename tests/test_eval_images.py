"""Image-set inputs of hmar-eval metrics (.npz, folders, lists) and their errors; the TF1 bilinear resize."""
import numpy as np
import pytest
import torch

from hmar_model.eval.features import resize_bilinear_tf1
from hmar_model.eval.images import ImageSetError, open_source

Image = pytest.importorskip("PIL.Image", reason="image folders are read with Pillow")


def random_images(rng, n, h=12, w=12):
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def read_all(source, batch_size=3):
    return np.concatenate(list(source.batches(batch_size)))


def test_npz_plain_and_compressed_are_read_exactly(tmp_path):
    rng = np.random.default_rng()
    images = random_images(rng, 7)
    np.savez(tmp_path / "plain.npz", images, np.arange(7))
    np.savez_compressed(tmp_path / "packed.npz", images)
    plain = open_source(tmp_path / "plain.npz")
    assert isinstance(plain.array, np.memmap)  # streamed, not loaded
    for name in ("plain.npz", "packed.npz"):
        source = open_source(tmp_path / name)
        assert source.num_images == 7 and source.image_shape == (12, 12, 3)
        np.testing.assert_array_equal(read_all(source), images)


def test_folder_and_list_are_read_in_order(tmp_path):
    rng = np.random.default_rng()
    images = random_images(rng, 5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    np.testing.assert_array_equal(read_all(open_source(folder)), images)
    (tmp_path / "list.txt").write_text("\n".join(f"imgs/{i:02d}.png" for i in (4, 0, 2)) + "\n")
    np.testing.assert_array_equal(read_all(open_source(tmp_path / "list.txt")), images[[4, 0, 2]])


def test_npz_with_statistics_only(tmp_path):
    mu, sigma = np.zeros(4), np.eye(4)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    source = open_source(tmp_path / "stats.npz")
    assert not source.has_images and set(source.stats) == {"pool"}
    np.savez(tmp_path / "bad.npz", mu=mu, sigma=np.eye(3))
    with pytest.raises(ImageSetError, match="bad.npz: precomputed pool statistics"):
        open_source(tmp_path / "bad.npz")


@pytest.mark.parametrize("case, match", [
    ("no_arrays", "expected 'arr_0'"),
    ("float_images", "arr_0 must be uint8 images"),
    ("one_image", "1 image"),
    ("not_a_zip", "not a readable .npz"),
])
def test_bad_npz_files_name_the_file_and_the_problem(tmp_path, case, match):
    rng = np.random.default_rng()
    path = tmp_path / f"{case}.npz"
    if case == "no_arrays":
        np.savez(path, images=random_images(rng, 3))
    elif case == "float_images":
        np.savez(path, random_images(rng, 3).astype(np.float32))
    elif case == "one_image":
        np.savez(path, random_images(rng, 1))
    else:
        path.write_bytes(b"hello")
    with pytest.raises(ImageSetError, match=f"{case}.npz.*{match}"):
        open_source(path)


def test_bad_folders_name_the_file_and_the_problem(tmp_path):
    rng = np.random.default_rng()
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(random_images(rng, 1)[0]).save(folder / "a.png")
    Image.fromarray(random_images(rng, 1, 16, 12)[0]).save(folder / "b.png")
    with pytest.raises(ImageSetError, match="b.png: image is 12×16 but .*a.png is 12×12"):
        read_all(open_source(folder))
    (folder / "notes.csv").write_text("x")
    with pytest.raises(ImageSetError, match="notes.csv: not an image file"):
        open_source(folder)
    (folder / "notes.csv").unlink()
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(ImageSetError, match="b.png: not a readable image"):
        read_all(open_source(folder))
    (tmp_path / "list.txt").write_text("mixed/a.png\nmissing.png\n")
    with pytest.raises(ImageSetError, match="list.txt: line 2: .*missing.png does not exist"):
        open_source(tmp_path / "list.txt")
    with pytest.raises(ImageSetError, match="nowhere: no such file"):
        open_source(tmp_path / "nowhere")


def tf1_resize_reference(x, size):
    """TF1 ResizeBilinear (align_corners=False, no half-pixel centres) in float64 loops, (H, W) → (size, size)."""
    h, w = x.shape
    out = np.empty((size, size))
    for i in range(size):
        sy = i * h / size
        y0, fy = int(np.floor(sy)), sy - np.floor(sy)
        y1 = min(y0 + 1, h - 1)
        for j in range(size):
            sx = j * w / size
            x0, fx = int(np.floor(sx)), sx - np.floor(sx)
            x1 = min(x0 + 1, w - 1)
            top = x[y0, x0] + (x[y0, x1] - x[y0, x0]) * fx
            bottom = x[y1, x0] + (x[y1, x1] - x[y1, x0]) * fx
            out[i, j] = top + (bottom - top) * fy
    return out


@pytest.mark.parametrize("h, w, size", [(7, 5, 11), (16, 16, 29), (31, 12, 8)])
def test_tf1_resize_matches_reference(h, w, size):
    x = torch.rand(2, 3, h, w, dtype=torch.float64) * 255
    got = resize_bilinear_tf1(x, size)
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[b, c].numpy(), tf1_resize_reference(x[b, c].numpy(), size), rtol=1e-12)


def test_tf1_resize_known_values_and_identity():
    x = torch.tensor([[[[0.0, 100.0]]]])
    # source columns 0, 0.5, 1, 1.5 → the last one is clamped to the right edge (TF1), not extrapolated
    assert resize_bilinear_tf1(x.expand(1, 1, 2, 2), 4)[0, 0, 0].tolist() == [0.0, 50.0, 100.0, 100.0]
    y = torch.rand(1, 3, 299, 299)
    assert resize_bilinear_tf1(y) is y


def test_statistics_only_files_give_fid_without_the_network(tmp_path):
    from hmar_model.eval.evaluate import evaluate
    from hmar_model.eval.metrics import frechet_distance

    rng = np.random.default_rng()
    stats = []
    for name in ("a", "b"):
        x = rng.normal(size=(40, 6))
        stats.append((x.mean(0), np.cov(x.T)))
        np.savez(tmp_path / f"{name}.npz", mu=stats[-1][0], sigma=stats[-1][1])
    result = evaluate(tmp_path / "a.npz", tmp_path / "b.npz", inception=tmp_path / "never-loaded.pt")
    assert result["fid"] == pytest.approx(frechet_distance(*stats[0], *stats[1]), rel=1e-12)
    assert result["sfid"] is None and result["precision"] is None and result["inception_score"] is None
    assert any("precision/recall need images" in note for note in result["notes"])
