"""The paper's shallow-to-deep initialisation: deeper nets start from net A."""

from __future__ import annotations

import torch

from vgg.model import VGG

# PAPER.md's copy rule: net A's first four convs are stage-1 conv 1, stage-2
# conv 1 and stage-3 convs 1 and 2; each goes to the same (stage, position) of
# the deeper net, where the shapes match for B, C, D and E. (A literal "first
# four convs of the deep net" would put A's 64->128 conv on D's 64->64 one.)
COPIED_CONVS: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (3, 1), (3, 2))
COPIED_FCS: tuple[int, ...] = (0, 3, 6)  # FC1, FC2, FC3 in `VGG.classifier`


def init_from_shallower(deep: VGG, shallow: VGG) -> list[str]:
    """Copy net A's first four convs and its three FC layers into `deep`, in place.

    The copied layers keep training at the normal learning rate afterwards, as in
    the paper. Returns the names (in `deep.state_dict()`) of the parameters copied.
    """
    if shallow.config != "A":
        raise ValueError(
            f"init_from_shallower copies from config A (the paper's net A); "
            f"the shallow net is config {shallow.config}"
        )
    for field in ("width", "num_classes", "crop_size"):
        if getattr(deep, field) != getattr(shallow, field):
            raise ValueError(
                f"init_from_shallower needs nets of equal {field}: deep net has "
                f"{getattr(deep, field)!r}, net A has {getattr(shallow, field)!r}"
            )

    pairs: list[tuple[str, str]] = []
    for stage, position in COPIED_CONVS:
        source = next(s for s in shallow.conv_sites if (s.stage, s.position) == (stage, position))
        target = next(s for s in deep.conv_sites if (s.stage, s.position) == (stage, position))
        pairs.append((f"features.{target.index}", f"features.{source.index}"))
    pairs += [(f"classifier.{i}", f"classifier.{i}") for i in COPIED_FCS]

    deep_params = dict(deep.named_parameters())
    shallow_params = dict(shallow.named_parameters())
    copied: list[str] = []
    with torch.no_grad():
        for target_layer, source_layer in pairs:
            for kind in ("weight", "bias"):
                target = deep_params[f"{target_layer}.{kind}"]
                source = shallow_params[f"{source_layer}.{kind}"]
                if target.shape != source.shape:
                    raise ValueError(
                        f"cannot copy net A's {source_layer}.{kind} {tuple(source.shape)} "
                        f"into {target_layer}.{kind} {tuple(target.shape)}"
                    )
                target.copy_(source)
                copied.append(f"{target_layer}.{kind}")
    return copied
