"""Unsupervised pretraining, for when labels are scarce and unlabeled inputs are plenty.

Each method trains an encoder on unlabeled inputs and returns it, ready for
``gradwell.transfer.reuse`` (a new head) and ``fine_tune`` on the few labeled examples:

- ``autoencoder``: reconstruct the inputs through a mirrored decoder (tied weights optional);
- ``RBM``: a restricted Boltzmann machine trained by contrastive divergence (CD-k, PCD);
- ``gan``: tell real inputs from a generator's fakes (a GAN), keep the discriminator's lower layers;
- ``greedy_layerwise``: the pre-2010 recipe, a stack of RBMs or autoencoders one layer at a time;
- ``auxiliary``: a self-supervised task, masked-feature prediction or same-input pairs.

Every function takes `unlabeled` as a float tensor (N, *features), a Split or a Dataset (its
training inputs), and a seed; none touches the global RNG.
"""

from gradwell.pretrain.autoencoder import TiedLinear, autoencoder
from gradwell.pretrain.auxiliary import auxiliary
from gradwell.pretrain.gan import GANPretraining, gan
from gradwell.pretrain.greedy import greedy_layerwise
from gradwell.pretrain.rbm import RBM, cd_gradient, free_energy, sample_h_given_v, sample_v_given_h

__all__ = [
    "RBM",
    "GANPretraining",
    "TiedLinear",
    "autoencoder",
    "auxiliary",
    "cd_gradient",
    "free_energy",
    "gan",
    "greedy_layerwise",
    "sample_h_given_v",
    "sample_v_given_h",
]
