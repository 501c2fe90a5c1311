"""Micrograph EM (Kreymer, Singer & Bendory): an ab-initio map from whole micrographs,
without particle picking.  ``docs/methods/micrograph_em.md`` describes the method; the
modules follow its sections: :mod:`.basis` (§2), :mod:`.projection` (§3), :mod:`.patches`
(§4), :mod:`.estep` (§5), :mod:`.mstep` (§6), :mod:`.em` (§7), :mod:`.picking` (§8) and
:mod:`.evaluate` (§9)."""
