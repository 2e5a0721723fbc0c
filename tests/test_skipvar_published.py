"""SkipVAR's published selectors: the stored numbers are the released ones, and varrt's decisions
over a dense feature grid are the ones the released models make.

The reference values below were copied by hand from the released scikit-learn files
(fakerone-li/SkipVAR @607be0e, ``SkipVAR/decision_model_ssim_*/{skip,uncond}_model_*.pkl``), so
the test does not read varrt's data file to know what to expect: the expected decisions are
computed here, in numpy, from these values with sklearn's ``predict`` rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from varrt.export.configs import var_config
from varrt.runtime.policies import make_policy
from varrt.runtime.policies.skipvar import SkipVarPolicy, published_models

_SKIP_SCALER = {"mean": [0.11532138615148142, 0.48923248731220764], "scale": [0.05764771612275109, 0.07561757563689318]}
RELEASED = {
    "0.84": {
        "skip": {
            **_SKIP_SCALER,
            "classes": [0, 1, 2, 3],
            "coef": [
                [1.9242725791534256, 1.7238401096226157],
                [0.960067473600445, 0.2971142070897517],
                [-0.05940983910118705, -0.5505044484622732],
                [-2.8249302136526855, -1.4704498682500922],
            ],
            "intercept": [-0.8909667193946907, 0.7389152956922791, 0.8068347664885277, -0.6547833427861152],
        },
        "uncond": {
            "mean": [0.17937917334093983, 0.5736133414885901],
            "scale": [0.06273303498221941, 0.05396232882731276],
            "classes": [1, 2, 3],
            "coef": [
                [1.0163020533557818, 0.9910192939486673],
                [0.31731688877493053, -0.0029428785664912167],
                [-1.333618942130714, -0.9880764153821755],
            ],
            "intercept": [-2.848019860692351, 0.4557509239689939, 2.392268936723362],
        },
    },
    "0.86": {
        "skip": {
            **_SKIP_SCALER,
            "classes": [0, 1, 2, 3],
            "coef": [
                [2.1641653044918283, 1.6661314782609318],
                [1.166907562420955, 0.34480565540426344],
                [-0.17440826511994006, -0.6682059385293757],
                [-3.1566646017928472, -1.3427311951358207],
            ],
            "intercept": [0.31895173906917795, 1.1027351793584044, 0.5253935442685425, -1.9470804626961302],
        },
        "uncond": {
            "mean": [0.16657722835732866, 0.5567514946195111],
            "scale": [0.06068311741941712, 0.05432492139887306],
            "classes": [0, 1, 2, 3],
            "coef": [
                [1.3237928068839964, 0.5603645421460081],
                [0.8289244537141882, 1.06181905582816],
                [-0.09228242040550236, -0.2860038669217075],
                [-2.060434840192685, -1.336179731052464],
            ],
            "intercept": [-5.360062788724777, -1.3569819011676383, 2.7284023719799846, 3.9886423179124266],
        },
    },
    "0.88": {
        "skip": {
            **_SKIP_SCALER,
            "classes": [0, 1, 2, 3],
            "coef": [
                [2.2966986519551233, 1.678844972370292],
                [1.3476167111494524, 0.18920650609603057],
                [-0.3402823411847127, -0.5623325073540516],
                [-3.3040330219198597, -1.3057189711122656],
            ],
            "intercept": [1.6122107412865572, 1.543251455484846, 0.18634035048868314, -3.3418025472600963],
        },
        "uncond": {
            "mean": [0.15124063279198588, 0.542383891456532],
            "scale": [0.05795045222600696, 0.057830466569544985],
            "classes": [0, 1, 2, 3],
            "coef": [
                [1.3747484327549653, 0.8568543416836114],
                [0.8233579899944021, 1.0199831841138094],
                [-0.12185675377851685, -0.5025827975511511],
                [-2.0762496689708456, -1.3742547282462678],
            ],
            "intercept": [-6.0274565752301115, -0.7597283641308284, 3.0354930400459144, 3.751691899315096],
        },
    },
    "0.84-diff_only": {
        "skip": {
            "mean": [0.11532138615148142],
            "scale": [0.057647716122751096],
            "classes": [0, 1, 2, 3],
            "coef": [[2.1482674463804012], [0.996630291252788], [-0.07900222844316228], [-3.065895509190031]],
            "intercept": [-0.29608539725587163, 0.47038055006634144, 0.4957236332194349, -0.6700187860299063],
        },
        "uncond": {
            "mean": [0.17937917334093983],
            "scale": [0.06273303498221941],
            "classes": [1, 2, 3],
            "coef": [[1.0218550288272277], [0.28090664801517123], [-1.302761676842398]],
            "intercept": [-2.26184502682503, 0.2668743871759551, 1.9949706396490796],
        },
    },
}
FIELDS = ("mean", "scale", "classes", "coef", "intercept")


def feature_grid() -> np.ndarray:
    """diff_hf 0:0.002:0.4 x hf_ratio 0.3:0.002:0.75 (201 x 226 = 45,426 points), as float32
    features (what the runtime computes), widened exactly to float64 (what sklearn reads)."""
    d, r = np.meshgrid(np.linspace(0.0, 0.4, 201), np.linspace(0.3, 0.75, 226), indexing="ij")
    return np.stack((d.ravel(), r.ravel()), 1).astype(np.float32).astype(np.float64)


def predict(m: dict, x: np.ndarray) -> np.ndarray:
    """sklearn's StandardScaler.transform + LogisticRegression.predict (multinomial)."""
    z = (x - np.asarray(m["mean"])) / np.asarray(m["scale"])
    return np.asarray(m["classes"])[np.argmax(z @ np.asarray(m["coef"]).T + np.asarray(m["intercept"]), axis=1)]


def official_plans(models: dict, x: np.ndarray) -> np.ndarray:
    """The official rule as a plan index: skip k > 0 -> skip k (1..3); else the uncond model's
    k > 0 -> uncond k (4..6); else base (0)."""
    skip, uncond = predict(models["skip"], x), predict(models["uncond"], x)
    return np.where(skip > 0, skip, np.where(uncond > 0, uncond + 3, 0))


@pytest.mark.parametrize("key", sorted(RELEASED))
def test_the_stored_selectors_are_the_released_numbers(key):
    stored = published_models()["models"][key]
    for part in ("skip", "uncond"):
        assert {f: stored[part][f] for f in FIELDS} == {f: RELEASED[key][part][f] for f in FIELDS}, (key, part)


@pytest.mark.parametrize("key", sorted(RELEASED))
def test_decisions_over_the_grid_are_the_released_models(key):
    threshold, _, variant = key.partition("-")
    spec = f"skipvar:threshold={threshold}" + (f",variant={variant}" if variant else "")
    policy = make_policy(spec, var_config("var-tiny-d2"))
    x = feature_grid()[:, : len(RELEASED[key]["skip"]["mean"])]
    expected = official_plans(RELEASED[key], x)
    got = policy.decide(torch.from_numpy(x).float()).numpy()
    assert (got != expected).sum() == 0, np.argwhere(got != expected)[:10]
    if threshold == "0.84":  # the 0.84 uncond models have no class 0: 'base' is never chosen
        assert 0 not in set(got.tolist()) and set(got.tolist()) <= set(range(1, 7))


def test_the_grid_tells_rounded_coefficients_apart():
    """The decision test above is sharp enough: the same models rounded to 3 decimals (the values
    varrt stored before) decide differently on this grid at every two-feature threshold."""
    x = feature_grid()
    for key, flips in (("0.84", 10), ("0.86", 9), ("0.88", 8)):
        rounded = {
            part: {**m, **{f: np.round(np.asarray(m[f]), 3).tolist() for f in ("coef", "intercept")}}
            for part, m in RELEASED[key].items()
        }
        rounded = {
            part: {**m, **{f: np.round(np.asarray(RELEASED[key][part][f]), 5).tolist() for f in ("mean", "scale")}}
            for part, m in rounded.items()
        }
        assert (official_plans(rounded, x) != official_plans(RELEASED[key], x)).sum() == flips, key


def test_refit_models_keep_working_through_the_same_rule():
    """A refit (tools/fit_skipvar.py) carries extra keys (label counts, provenance): decide ignores them."""
    models = {part: {**m, "n_samples_seen": 3} for part, m in RELEASED["0.86"].items()}
    policy = SkipVarPolicy(var_config("var-tiny-d2"), {**models, "label_counts": {}})
    x = feature_grid()[::97]
    assert policy.decide(torch.from_numpy(x).float()).tolist() == official_plans(RELEASED["0.86"], x).tolist()
