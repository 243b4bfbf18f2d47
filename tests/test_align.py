"""B-cosify without labels (timm_bcos.align, train.py --align-to): the student is the teacher's
B-cosified copy, the teacher stays frozen, the losses are what they say (checked by hand in float64),
a step lowers them, and train.py aligns on unlabeled data with its guarantees (1 -> 2 processes,
exact resume, export that loads back); evaluate.py's probes against brute force."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from test_train import (CIFAR, ROOT, TRAIN, _env, _launch_two, json_lines, load_weights, make_parquet_dataset,
                        needs_cifar, run_train)

import timm_bcos  # noqa: F401
from timm_bcos.align import AlignConfig, AlignError, Aligner, bcosified_student, default_layers
from timm_bcos.align.losses import feature_loss, logit_loss
from timm_bcos.eval.probe import knn_accuracy, linear_probe_accuracy
from timm_bcos.hub import save_pretrained
from timm_bcos.training import ConfigError, TrainConfig


def _teacher(num_classes=10, width=0.125):
    torch.manual_seed(0)
    return timm.create_model("cifar_convnet", width=width, num_classes=num_classes).eval()


def test_student_is_the_bcosified_copy_and_the_teacher_stays_frozen():
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = bcosified_student(teacher)
    aligner = Aligner(teacher, student)
    assert aligner.layers == ["features.1", "features.4", "features.7"] and aligner.use_logits
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
    assert torch.equal(student.features[0][0].weight[:, :3] * 2, teacher.features[0][0].weight)  # carried
    x = torch.rand(8, 3, 32, 32)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss, parts = aligner(student, x)
        assert set(parts) == {"pooled", "layer:features.1", "layer:features.4", "layer:features.7", "logits"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", ["cifar_convnet", "resnet18", "test_vit"])
def test_a_student_that_computes_its_teacher_is_aligned_to_it(name):
    """At B=1 with its biases the B-cosified copy is the teacher (test_bcosify's premise): every term,
    taken on the matching modules and inputs (the teacher's normalisation applied, the student's
    undone), is zero, in float64. A term compared across the wrong modules or inputs would not be."""
    torch.manual_seed(0)
    kwargs = dict(width=0.125) if name == "cifar_convnet" else dict(img_size=32) if name == "test_vit" else {}
    teacher = timm.create_model(name, num_classes=5, **kwargs).double().eval()
    premise = dict(b=1.0, linear_bias=True, norm_bias=True, max_pool_to_avg=False, logit_bias=0.0)
    student = bcosified_student(teacher, **premise).eval()
    aligner = Aligner(teacher, student, AlignConfig(logits="cosine"))
    assert len(aligner.layers) == 3
    with torch.no_grad():
        _, parts = aligner(student, torch.rand(3, 3, 64 if name == "resnet18" else 32, 64 if name == "resnet18" else 32,
                                                dtype=torch.float64))
    assert max(float(v) for v in parts.values()) < 1e-10, parts
    at_b2 = bcosified_student(teacher).double().eval()  # the recipe's B=2 without biases: not the teacher
    assert min(float(v) for v in Aligner(teacher, at_b2)(at_b2, torch.rand(3, 3, 32, 32, dtype=torch.float64))[1].values()) > 1e-6


def test_losses_are_what_they_say_in_float64():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3, 4, dtype=torch.float64), torch.randn(2, 5, 3, 4, dtype=torch.float64)
    by_hand = sum(1 - (s[b, :, i, j] @ t[b, :, i, j]) / (s[b, :, i, j].norm() * t[b, :, i, j].norm())
                  for b in range(2) for i in range(3) for j in range(4)) / 24
    assert abs(float(feature_loss(s, t, "cosine")) - float(by_hand)) < 1e-12
    tokens_s, tokens_t = s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2)  # [B, N, C]: cosine per token
    assert abs(float(feature_loss(tokens_s, tokens_t, "cosine")) - float(by_hand)) < 1e-12
    nhwc = [v.permute(0, 2, 3, 1) for v in (s, t)]  # Swin's stages: channels last
    assert abs(float(feature_loss(*nhwc, "cosine", channels_last=True)) - float(by_hand)) < 1e-12
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, depths=(1, 1, 1, 1))
    assert Aligner(swin, bcosified_student(swin)).channels_last  # so its maps are compared that way
    assert abs(float(feature_loss(s, t, "mse")) - float(((s - t) ** 2).mean())) < 1e-12
    zs, zt = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    p, q = F.softmax(zt / 2, -1), F.softmax(zs / 2, -1)
    kl = (p * (p / q).log()).sum() / 3 * 4
    assert abs(float(logit_loss(zs, zt, "kl", temperature=2.0)) - float(kl)) < 1e-12
    assert float(logit_loss(zs + 5.0, zs * 1, "cosine")) < 1e-12  # a shared offset (the logit bias) drops out
    sig = torch.sigmoid(zs)
    bce = -(p * sig.log() + (1 - p) * (1 - sig).log()).mean()  # Eq. 16 with the teacher's softmax as targets
    assert abs(float(logit_loss(zs, zt, "bce", temperature=2.0)) - float(bce)) < 1e-12
    with pytest.raises(ValueError, match="do not match"):
        feature_loss(s, t[:, :4], "cosine")


def test_default_layers_are_alohas_depths():
    assert default_layers(timm.create_model("test_vit", depth=12)) == ["blocks.3", "blocks.7", "blocks.11"]
    assert default_layers(timm.create_model("resnet18")) == ["act1", "layer2", "layer4"]
    teacher = _teacher()
    with pytest.raises(AlignError, match="'nope' is not in the teacher"):
        Aligner(teacher, bcosified_student(teacher), AlignConfig(layers=["nope"]))
    with pytest.raises(AlignError, match="logit loss must be one of"):
        AlignConfig(logits="l2")


def test_options_that_need_labels_are_refused():
    with pytest.raises(ConfigError, match="--align-to does not work with --guidance, --mixup/--cutmix"):
        TrainConfig(dataset="d", align_to="t", guidance="energy", mask_column="m", mixup=0.2)
    with pytest.raises(ConfigError, match="--model bcos_converted"):
        TrainConfig(dataset="d", align_to="t", model="bcos_resnet18")
    assert TrainConfig(dataset="d", align_to="t").model == "bcos_converted"


ALIGN = ["--crop", "pad", "--lr", "0.003", "--sched", "none", "--batch-size", "16", "--epochs", "2",
         "--export", "last", "--dtype", "float64", "--opt", "sgd", "--momentum", "0.9", "--checkpoint-every", "1",
         "--keep-checkpoints", "100"]


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "cifar_convnet"
    save_pretrained(_teacher(), folder)
    return f"local-dir:{folder}"


def _unlabeled_parquet(root):
    """The first CIFAR-10 test images in the Hub parquet layout, their label column dropped."""
    import pyarrow.parquet as pq

    data = make_parquet_dataset(root, {"train": 64, "test": 32})
    for f in (data / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(f).drop(["label"]), f)
    return data


@needs_cifar
def test_align_on_unlabeled_parquet_two_processes_equal_one_and_resume_is_exact(tmp_path, saved_teacher):
    data = _unlabeled_parquet(tmp_path / "d")
    # the student has batch norms: --sync-bn makes two processes' statistics those of the global batch
    args = [*ALIGN, "--align-to", saved_teacher, "--dataset", str(data), "--val-split", "test", "--sync-bn"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_train(tmp_path, *args, "--output", str(one))
    lines = json_lines(proc.stdout)
    assert "64 train / 0 val images" in proc.stdout  # the unlabeled validation split is not scored
    logged = [line for line in lines if "train/align_pooled" in line]
    assert logged and "train/align_logits" in logged[0] and "train/align_layer:features.7" in logged[0]
    run_train(tmp_path, *args, "--cpu", "--output", str(two), launcher=_launch_two(), timeout=300)
    init = bcosified_student(_teacher()).double().state_dict()
    a, b = (load_weights(d / "export" / "model.safetensors") for d in (one, two))
    moved = torch.cat([(a[k] - init[k]).flatten() for k in a if a[k].is_floating_point()]).norm()
    apart = torch.cat([(a[k] - b[k]).flatten() for k in a if a[k].is_floating_point()]).norm()
    assert moved > 1e-3 and apart / moved < 1e-9, (float(moved), float(apart))
    # resume mid-run (after step 3 of 8) from the run's own checkpoint: the same export, bit for bit
    cut = tmp_path / "cut"
    shutil.copytree(one, cut)
    shutil.rmtree(cut / "export")
    for later in (cut / "checkpoints").glob("step_*"):
        if later.name > "step_000000003":
            shutil.rmtree(later)
    resumed = run_train(tmp_path, *args, "--output", str(cut), "--resume", "latest")
    assert "resumed from" in resumed.stdout
    c = load_weights(cut / "export" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    student = timm.create_model(f"local-dir:{one / 'export'}", pretrained=True).double().eval()
    assert student(torch.rand(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 10)


@needs_cifar
@pytest.mark.parametrize("source", ["parquet-stream", "wds"])
def test_align_streams_unlabeled_shards(tmp_path, saved_teacher, source):
    """--streaming parquet shards without a label column, and tar shards without label members."""
    import pyarrow.parquet as pq
    from helpers import write_parquet_shards, write_tar_shards

    if source == "wds":
        dataset = f"wds:{write_tar_shards(tmp_path / 'wds', CIFAR, train=48, test=16, shards=2, labels=False)}"
    else:
        root = write_parquet_shards(tmp_path / "pq", CIFAR, train=48, test=16, shards=2, row_group=16)
        for f in (root / "data").glob("*.parquet"):
            pq.write_table(pq.read_table(f).drop(["label"]), f)
        dataset = str(root)
    out = tmp_path / "o"
    proc = run_train(tmp_path, *ALIGN, "--align-to", saved_teacher, "--dataset", dataset, "--streaming",
                     "--val-split", "test", "--epochs", "1", "--output", str(out))
    assert "train/align_pooled" in proc.stdout and "0 val images" in proc.stdout
    assert (out / "export" / "model.safetensors").is_file()
    labelled = run_train(tmp_path, "--model", "bcos_cifar10", "--dataset", dataset, "--streaming", "--val-split", "", "-b", "16",
                         "--output", str(tmp_path / "l"), check=False)
    assert labelled.returncode == 2 and "label" in labelled.stderr


@needs_cifar
def test_a_headless_teacher_aligns_on_a_folder_of_images_and_exports_a_feature_extractor(tmp_path):
    """A backbone with num_classes=0 (no head to distil) and images without class folders."""
    import pyarrow.parquet as pq
    from PIL import Image
    import io

    folder = tmp_path / "images"
    folder.mkdir()
    for i, row in enumerate(pq.read_table(CIFAR / "data" / "test-00000-of-00001.parquet").slice(0, 32).to_pylist()):
        Image.open(io.BytesIO(row["image"]["bytes"])).save(folder / f"{i:03d}.png")
    save_pretrained(_teacher(num_classes=0), tmp_path / "backbone")
    out = tmp_path / "o"
    proc = run_train(tmp_path, *ALIGN, "--align-to", f"local-dir:{tmp_path / 'backbone'}", "--dataset", str(folder),
                     "--val-split", "", "--epochs", "1", "--output", str(out))
    assert "0 classes" in proc.stdout and "train/align_logits" not in proc.stdout
    model = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True).eval()
    assert model.num_classes == 0 and model(torch.rand(2, 3, 32, 32)).shape == (2, 32)
    labelled = run_train(tmp_path, *ALIGN, "--model", "bcos_cifar10", "--dataset", str(folder), "--val-split", "",
                         check=False)
    assert labelled.returncode == 2 and "no label column found" in labelled.stderr


@needs_cifar
def test_head_only_trains_the_classifier_and_nothing_else(tmp_path):
    out = tmp_path / "o"
    # with batch norms: their running statistics must stay too (the backbone runs in eval mode)
    run_train(tmp_path, "--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125, "norm": true}', "--dataset",
              str(CIFAR), "--train-split", "train[:64]", "--val-split", "", *ALIGN[:-4], "--head-only",
              "--output", str(out))
    torch.manual_seed(0)  # train.py's --seed 0 before creating the model
    init = timm.create_model("bcos_cifar10", width=0.125, norm=True).double().state_dict()
    assert any("running_var" in k for k in init)
    got = load_weights(out / "export" / "model.safetensors")
    changed = {k for k in got if not torch.equal(got[k], init[k])}
    assert changed and all(k.startswith("fc.") or k.startswith("classifier") for k in changed), changed


def test_knn_probe_is_the_brute_force_vote_and_the_linear_probe_separates_what_is_separable():
    torch.manual_seed(0)
    train, test = torch.randn(60, 4, dtype=torch.float64), torch.randn(25, 4, dtype=torch.float64)
    train_labels, test_labels = torch.randint(0, 3, (60,)), torch.randint(0, 3, (25,))
    expected = 0
    for x, y in zip(test, test_labels):
        sims = F.cosine_similarity(train, x[None], dim=1)
        idx = sims.argsort(descending=True)[:5]
        votes = [sum(float((sims[i] / 0.07).exp()) for i in idx if train_labels[i] == c) for c in range(3)]
        expected += int(max(range(3), key=votes.__getitem__) == int(y))
    assert knn_accuracy(train, train_labels, test, test_labels, k=5) == pytest.approx(100 * expected / 25)
    centres = torch.eye(4, dtype=torch.float64)[:3] * 6
    labels = torch.arange(3).repeat(20)
    points = centres[labels] + torch.randn(60, 4, dtype=torch.float64)
    assert linear_probe_accuracy(points[:45], labels[:45], points[45:], labels[45:]) == 100.0


# foundation ViTs, tiny (2 blocks of width 64 at 32 px) with random weights and no head, as released
FOUNDATION = {
    "dinov3": "vit_small_patch16_dinov3",          # Eva: RoPE, register tokens, layer scale
    "siglip2": "vit_base_patch16_siglip_224.v2_webli",  # attention-pool head (AttentionPoolLatent)
    "clip": "vit_base_patch16_clip_224",           # CLIP's image tower: pre-norm, class token
}


@pytest.mark.parametrize("family", FOUNDATION)
def test_foundation_vits_bcosify_verify_explain_completely_and_align(family):
    from helpers import rel_err

    from timm_bcos import verify

    torch.manual_seed(0)
    teacher = timm.create_model(FOUNDATION[family], num_classes=0, depth=3, embed_dim=64, num_heads=2,
                                img_size=32).double().eval()
    student = bcosified_student(teacher).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    aligner = Aligner(teacher, student)
    assert aligner.layers == ["blocks.0", "blocks.1", "blocks.2"] and not aligner.use_logits
    first, _ = aligner(student, x)
    first.backward()
    params = [p for p in student.parameters() if p.grad is not None]
    norm = torch.cat([p.grad.flatten() for p in params]).norm()
    with torch.no_grad():  # one small step down the gradient (of norm 1e-3 in parameter space)
        for p in params:
            p -= 1e-3 * p.grad / norm
        after, _ = aligner(student, x)
    assert float(norm) > 0 and float(after) < float(first.detach())
    student.reset_classifier(5)
    student.eval()
    report = verify(student, x[:1])
    assert len(report.checked) >= 20 and not report.failures
    expl = student.explain(x[:2], target=torch.tensor([0, 3]))
    total = expl.contributions.sum((2, 3)) + expl.fixed_share
    assert (expl.explained.abs() > 0).all() and rel_err(total, expl.explained) <= 1e-9
