"""``Strict``: the one base of every recipe section.

A leaf module (it imports only pydantic) so that the stage config modules and
``curation.models.config`` can share it without an import circle: ``curation.config`` imports
them, so the base cannot live there.

* ``extra="forbid"``: a misspelt key in a recipe is an error, never silently ignored.
* ``populate_by_name=True``: a field with an alias (``validate``/``validate_``,
  ``from``/``from_``) accepts both spellings, so a config built in Python or re-validated from
  its own dump works as well as one read from YAML.
* ``protected_namespaces=()``: a field may be called ``model_*`` (model ids are everywhere in a
  recipe) without a warning from pydantic about its own namespace, whatever its version.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A recipe section: unknown keys are errors, aliased fields take either name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())
