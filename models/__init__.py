"""edgewatch models: bundle format, feature spec, scoring, training and evaluation.

``models.bundle``, ``models.features`` and ``models.scoring`` never import TensorFlow;
training lives in ``models.training`` behind the ``train`` extra.
"""
