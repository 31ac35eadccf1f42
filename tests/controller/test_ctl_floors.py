"""The controller's replica floors (pre-warm, merit-order floors, the capacity probe) never roll
out a unit: no new Revision, no new pod template, no InferenceService edit.

The fake API server acts like KServe and Knative here (ctl_fakeapi.py): an edit of an
InferenceService's predictor creates a new Revision and replaces the unit's pods, a Revision's
annotations flow to its PodAutoscaler (Knative >= 1.21) or into its pod template (Knative < 1.21),
and ``fake.unit_rollouts()`` lists every rollout.
"""

from __future__ import annotations

import pytest

from controller.kube import Kube, api_client

from .ctl_fakeapi import FakeKube
from .ctl_world import INTERVAL, NAMES, NS, World

CAPACITY_UNITS = [n for n in NAMES if n != "sd21-inf2"]


def isvc_specs(world: World) -> dict[str, dict]:
    return {
        n: world.fake.get("serving.kserve.io/v1beta1", "InferenceService", n, NS)["spec"]["predictor"] for n in NAMES
    }


def outage_then_recovery(world: World, clock, ctl) -> tuple[dict, dict]:
    """Fail over (floors rise), recover and fall back (floors come down); the floors at both ends."""
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    assert ctl.step().decision.switched
    raised = {n: world.floor(n) for n in NAMES}
    clock.advance(INTERVAL)
    world.inf2_recovered()
    for _ in range(60):
        clock.advance(INTERVAL)
        ctl.step()
    return raised, {n: world.floor(n) for n in NAMES}


@pytest.mark.parametrize("knative", [(1, 21), (1, 15)], ids=["knative-1.21", "knative-1.15"])
def test_floors_rise_and_fall_without_a_rollout(knative, clock, tmp_path):
    with FakeKube(knative_version=knative) as fake:
        world = World(fake, clock, fake.write_kubeconfig(tmp_path / "kc", NS))
        before = isvc_specs(world)
        raised, lowered = outage_then_recovery(world, clock, world.controller())
        assert fake.unit_rollouts() == []  # no new Revision, no new pod template
        assert isvc_specs(world) == before  # the user's InferenceServices are not edited
        assert all(raised[n] >= 2 for n in CAPACITY_UNITS), raised  # pre-warm reached the KPA
        assert all(lowered[n] == 1 for n in CAPACITY_UNITS), lowered  # and came back down
        assert ctl_state_is_cost(world)


def ctl_state_is_cost(world: World) -> bool:
    return world.weights()["sd21-inf2"] == 100


def test_a_real_rollout_starts_from_the_template_and_gets_the_floor_again(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.step()
    assert world.floor("sd21-trn1") >= 2
    # A person rolls out a new image: KServe's template (minReplicas 1) makes a new Revision.
    world.fake.edit(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        "sd21-trn1",
        NS,
        lambda o: o["spec"]["predictor"].update(model={"modelFormat": {"name": "custom"}, "image": "v2"}),
    )
    (rollout,) = world.fake.unit_rollouts()
    assert rollout.revision == "sd21-trn1-predictor-00002"
    assert world.floor("sd21-trn1") == 1  # the new Revision starts from the template
    clock.advance(INTERVAL)
    decision = ctl.step().decision
    # The controller sets its floor on the new Revision.
    assert world.floor("sd21-trn1") == decision.prewarm["sd21-trn1"] >= 2
    assert len(world.fake.unit_rollouts()) == 1  # and causes no rollout itself


def test_the_fake_rolls_out_on_a_template_edit_and_syncs_revision_annotations(world):
    """The fake's KServe/Knative model itself (what the tests above rely on)."""
    fake = world.fake
    fake.edit("serving.kserve.io/v1beta1", "InferenceService", "sd21-g6-triton", NS, lambda o: None)
    assert fake.unit_rollouts() == []  # a no-op edit renders the same template
    kube = Kube(api_client(str(world.kubeconfig)), timeout_s=2)  # a person's client
    kube.patch_custom(
        "autoscaling.internal.knative.dev",
        "v1alpha1",
        NS,
        "podautoscalers",
        "sd21-g6-triton-predictor-00001",
        {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "4"}}},
    )
    assert world.floor("sd21-g6-triton") == 1  # Knative >= 1.21: the Revision is the source of truth
    kube.patch_custom(
        "serving.knative.dev",
        "v1",
        NS,
        "revisions",
        "sd21-g6-triton-predictor-00001",
        {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "4"}}},
    )
    assert world.floor("sd21-g6-triton") == 4 and fake.unit_rollouts() == []
    kube.patch_custom(
        "serving.kserve.io",
        "v1beta1",
        NS,
        "inferenceservices",
        "sd21-g6-triton",
        {"spec": {"predictor": {"minReplicas": 3}}},
    )
    (rollout,) = fake.unit_rollouts()
    assert rollout.kind == "InferenceService" and world.floor("sd21-g6-triton") == 3
