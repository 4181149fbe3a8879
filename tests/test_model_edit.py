"""Zero-shot editing (inpainting, outpainting, class editing) and the hmar-sample / hmar-edit command lines."""
import pytest
import torch

import hmar_model as hm
from hmar_model.edit import outpaint_canvas, token_masks
from hmar_model.tiny import TINY_PATCH_NUMS, randomize_, tiny_transformer, tiny_vqvae


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"vqvae": tiny_vqvae(), "hmar": randomize_(tiny_transformer("hmar"), 3).eval(),
            "var": randomize_(tiny_transformer("var"), 4).eval()}


def left_half_mask():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1
    return mask


def test_token_masks_follow_coverage():
    masks = token_masks(left_half_mask(), TINY_PATCH_NUMS, coverage=0.5)
    assert [m.view(-1).tolist() for m in masks[:2]] == [[True], [True, False, True, False]]
    # 16 → 3 area windows overlap: the middle column's window is pixels 5..10, exactly half inside the mask
    assert masks[2].view(3, 3)[:, :2].all() and not masks[2].view(3, 3)[:, 2].any()
    assert token_masks(left_half_mask(), TINY_PATCH_NUMS, coverage=0.6)[2].view(3, 3)[:, 1:].sum() == 0
    assert not token_masks(left_half_mask(), TINY_PATCH_NUMS, coverage=1.0)[0].any()
    with pytest.raises(ValueError, match="coverage"):
        token_masks(left_half_mask(), TINY_PATCH_NUMS, coverage=0)


@pytest.mark.parametrize("refine_steps", [0, 3])
def test_inpainting_keeps_unmasked_tokens(models, refine_steps):
    image = torch.rand(3, 3, 16, 16)
    mask = (torch.rand(3, 1, 16, 16) < 0.5).float()
    out, indices = hm.inpaint(models["hmar"], models["vqvae"], image, mask, labels=[1, 2, 3], seed=0,
                              refine_steps=refine_steps, return_indices=True)
    original = models["vqvae"].img_to_indices(image * 2 - 1)
    changed = 0
    for m, new, old in zip(token_masks(mask, TINY_PATCH_NUMS), indices, original):
        assert torch.equal(new[~m], old[~m])
        changed += int((new[m] != old[m]).sum())
    assert changed > 0 and out.shape == image.shape
    again = hm.inpaint(models["hmar"], models["vqvae"], image, mask, labels=[1, 2, 3], seed=0,
                       refine_steps=refine_steps)
    assert torch.equal(out, again)


def test_empty_mask_reconstructs_the_image(models):
    image = torch.rand(2, 3, 16, 16)
    out = hm.inpaint(models["hmar"], models["vqvae"], image, torch.zeros(1, 1, 16, 16), seed=0)
    rec = models["vqvae"].img_to_reconstructed_img(image * 2 - 1).add(1).mul(0.5)
    torch.testing.assert_close(out, rec, rtol=0, atol=1e-5)


def test_class_edit_depends_on_the_class(models):
    image, mask = torch.rand(2, 3, 16, 16), left_half_mask()
    _, a = hm.edit_class(models["hmar"], models["vqvae"], image, mask, [1, 1], seed=0, return_indices=True)
    _, b = hm.edit_class(models["hmar"], models["vqvae"], image, mask, [7, 7], seed=0, return_indices=True)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="target class"):
        hm.edit_class(models["hmar"], models["vqvae"], image, mask, None)


def test_outpainting_canvas_and_run(models):
    image = torch.rand(2, 3, 12, 20)
    canvas, mask = outpaint_canvas(image, 16, (4, 2, 8, 12))
    assert canvas.shape == (2, 3, 16, 16) and mask[0, 0, 4:12, 2:14].sum() == 0 and mask.sum() == 256 - 96
    assert torch.all(canvas[:, :, :4] == 0.5)
    out = hm.outpaint(models["hmar"], models["vqvae"], image, (4, 2, 8, 12), seed=1, refine_steps=1)
    assert out.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="inside the 16×16 canvas"):
        outpaint_canvas(image, 16, (10, 0, 8, 8))


def test_editing_input_errors(models):
    with pytest.raises(TypeError, match="composite HMAR"):
        hm.inpaint(models["var"], models["vqvae"], torch.rand(1, 3, 16, 16), left_half_mask())
    with pytest.raises(ValueError, match="mask must be"):
        hm.inpaint(models["hmar"], models["vqvae"], torch.rand(1, 3, 16, 16), torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="model's schedule makes 16×16"):
        hm.inpaint(models["hmar"], models["vqvae"], torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32))


def test_command_lines(models, tmp_path):
    pil = pytest.importorskip("PIL.Image", reason="the CLIs write PNG through Pillow")
    from hmar_model.cli import edit, sample

    vae, model = tmp_path / "vae.pth", tmp_path / "hmar.safetensors"
    hm.save_checkpoint(models["vqvae"], vae)
    hm.save_checkpoint(models["hmar"], model)
    common = ["--vae", str(vae), "--model", str(model), "--device", "cpu", "--seed", "3", "--top-k", "10"]
    runs = []
    for name in ("a.png", "b.png"):
        sample.main(common + ["--classes", "1", "2", "--num-images", "3", "--out", str(tmp_path / name),
                              "--mask-schedule", "[[1],[1,3],[3,6],[16]]"])
        runs.append((tmp_path / name).read_bytes())
    assert runs[0] == runs[1]
    grid = pil.open(tmp_path / "a.png")
    assert grid.size == (3 * 18 + 2, 2 * 18 + 2)
    with pytest.raises(ValueError, match="sums to 8"):  # --debug: the error itself (test_cli_errors: the message)
        sample.main(common + ["--classes", "1", "--out", str(tmp_path / "c.png"), "--debug",
                              "--mask-schedule", "[[1],[1,3],[3,5],[16]]"])
    pil.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / "in.png")
    mask = torch.zeros(16, 16, dtype=torch.uint8)
    mask[4:12, 4:12] = 255
    pil.fromarray(mask.numpy()).save(tmp_path / "mask.png")
    edit.main(common + ["--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--class", "4",
                        "--num-images", "2", "--refine-steps", "2", "--out", str(tmp_path / "edit.png")])
    edit.main(common + ["--image", str(tmp_path / "in.png"), "--box", "2,2,12,12", "--num-images", "1",
                        "--out", str(tmp_path / "out.png")])
    assert pil.open(tmp_path / "edit.png").size == (3 * 18 + 2, 18 + 2)
    assert pil.open(tmp_path / "out.png").size == (2 * 18 + 2, 18 + 2)
