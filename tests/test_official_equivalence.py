"""Our MCLRec against the authors' model code (../shared/official-mclrec), side by side, parameter for parameter.

Both start from the same weights, see the same batches and augmented views (float64, dropout 0) and run five
batches of a schedule; afterwards every encoder and augmenter parameter must agree to 1e-9. The official
3-step schedule (step1/step2/step3 of its trainer, with its requires_grad freezing and optimisers) is written
out below as the published trainer does it. Skipped when the folder is absent.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import optim

from mclrec import config
from mclrec.models.augment import two_views
from mclrec.training.objectives import Batch, build_parts
from mclrec.training.trainer import Optimisers, train_step

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official-mclrec"
pytestmark = pytest.mark.skipif(not (OFFICIAL / "recbole").is_dir(), reason="../shared/official-mclrec is absent")
ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, MAX_LEN, BATCH = 30, 12, 8


@pytest.fixture(scope="module")
def official():
    """The official MCLRec and Extractor classes, imported from the shared folder (plain torch, no RecBole)."""
    sys.path.insert(0, str(OFFICIAL))
    try:
        from recbole.model.extractors import Extractor
        from recbole.model.sequential_recommender.mclrec import MCLRec
    finally:
        sys.path.remove(str(OFFICIAL))
    return MCLRec, Extractor


class _Dataset:
    def num(self, field):
        return N_ITEMS + 1  # RecBole counts [PAD] as an item


def _official_model(MCLRec, lmd: float, beta: float):
    cfg = dict(USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list",
               ITEM_LIST_LENGTH_FIELD="item_length", NEG_PREFIX="neg_", MAX_ITEM_LIST_LENGTH=MAX_LEN, n_layers=2,
               n_heads=2, hidden_size=64, inner_size=256, hidden_dropout_prob=0.0, attn_dropout_prob=0.0,
               hidden_act="gelu", layer_norm_eps=1e-12, train_batch_size=BATCH, lmd=lmd, beta=beta, tau=1, sim="dot",
               use_rl=1, initializer_range=0.02, loss_type="CE")
    return MCLRec(cfg, _Dataset())


def _official_step(model, aug1, aug2, opt, opt_aug, opt_joint, inter, joint: bool) -> None:
    """One batch of the published trainer: joint (one optimiser) or the meta schedule step1/step2/step3."""
    augmenter_params = list(aug1.parameters()) + list(aug2.parameters())
    if joint:
        opt_joint.zero_grad()
        model.calculate_loss(inter, [aug1, aug2]).backward()
        opt_joint.step()
        return
    for step, optimiser, train_augmenters in (("step1", opt, False), ("step2", opt_aug, True), ("step3", opt, False)):
        optimiser.zero_grad()
        for p in augmenter_params:
            p.requires_grad = train_augmenters
        model.calculate_loss(inter, [aug1, aug2], step).backward()
        optimiser.step()


def _random_batch(g: torch.Generator):
    lengths = torch.randint(1, MAX_LEN + 1, (BATCH,), generator=g)
    seq = torch.zeros(BATCH, MAX_LEN, dtype=torch.long)
    for i in range(BATCH):  # test data only
        seq[i, : lengths[i]] = torch.randint(1, N_ITEMS + 1, (int(lengths[i]),), generator=g)
    return seq, lengths, torch.randint(1, N_ITEMS + 1, (BATCH,), generator=g)


def _max_differences(official, lmd, beta, schedule="meta", use_rl=1, reg=True, variant="mclrec", n_batches=5):
    MCLRec, Extractor = official
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        off = _official_model(MCLRec, lmd, beta).double()
        off.use_rl = use_rl
        a1, a2 = Extractor([64, 32, 16, 64], "gelu", None), Extractor([64, 32, 16, 64], "gelu", None)
        opt = optim.Adam(off.parameters(), lr=1e-3, weight_decay=0)
        opt_aug = optim.Adam([{"params": a1.parameters()}, {"params": a2.parameters()}], lr=1e-3, weight_decay=0)
        opt_joint = optim.Adam([{"params": off.parameters()}, {"params": a1.parameters()}, {"params": a2.parameters()}],
                               lr=1e-3, weight_decay=0)
        cfg = config.resolve_run(config.load_params(ROOT / "params.yaml"), "sports", variant)
        cfg.update(lambda_cl1=lmd, beta=beta, hidden_dropout=0.0, attn_dropout=0.0, max_len=MAX_LEN, device="cpu",
                   schedule=schedule, reg=reg, length_buckets=[])
        parts = build_parts(cfg, N_ITEMS)
        parts.encoder.load_state_dict(off.state_dict())
        parts.augmenter1.load_state_dict(a1.state_dict())
        parts.augmenter2.load_state_dict(a2.state_dict())
        optimisers = Optimisers(cfg, parts)
        parts.train(True)
        off.train()
        g = torch.Generator().manual_seed(3)
        for _ in range(n_batches):
            seq, lengths, targets = _random_batch(g)
            v1, l1, v2, l2 = two_views(seq, lengths, g, 0.5, 0.5, 0.8)
            inter = {"item_id_list": seq, "item_length": lengths, "item_id": targets,
                     "aug1": v1, "aug_len1": l1, "aug2": v2, "aug_len2": l2}
            _official_step(off, a1, a2, opt, opt_aug, opt_joint, inter, joint=schedule == "joint")
            train_step(cfg, parts, optimisers, Batch(seq, lengths, targets, view1=(v1, l1), view2=(v2, l2)), g)
        enc = max((off.state_dict()[k] - v).abs().max().item() for k, v in parts.encoder.state_dict().items())
        aug = max(max((a1.state_dict()[k] - v).abs().max().item() for k, v in parts.augmenter1.state_dict().items()),
                  max((a2.state_dict()[k] - v).abs().max().item() for k, v in parts.augmenter2.state_dict().items()))
        return enc, aug
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("lmd,beta", [(0.0, 0.05), (0.04, 0.4), (0.03, 0.1)])  # Beauty, Sports, Yelp
def test_meta_schedule_equals_official(official, lmd, beta):
    enc, aug = _max_differences(official, lmd, beta)
    assert enc <= 1e-9 and aug <= 1e-9


def test_joint_schedule_equals_official(official):
    enc, aug = _max_differences(official, 0.04, 0.4, schedule="joint")
    assert enc <= 1e-9 and aug <= 1e-9


def test_without_regulariser_equals_official_use_rl_0(official):
    enc, aug = _max_differences(official, 0.04, 0.4, use_rl=0, reg=False)
    assert enc <= 1e-9 and aug <= 1e-9


def test_paper_schedule_differs_from_official_meta(official):
    # Algorithm 1 has no third step: the comparison must see it, or the check above could not fail either
    enc, _ = _max_differences(official, 0.04, 0.4, schedule="paper")
    assert enc > 1e-4
