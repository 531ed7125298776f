"""Frozen backbone families behind one seam (:class:`stgcma_fast.backbones.base.Backbone`)."""
