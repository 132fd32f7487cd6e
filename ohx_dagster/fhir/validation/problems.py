"""What every check reports: one Problem per finding, naming the element and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """A finding on one resource. `message` starts with the element's path
    ("Observation.status: 'done' is not in ..."), except for findings about the whole resource."""

    resource_type: str
    resource_id: str
    message: str
    layer: str = "model"

    @property
    def path(self) -> str:
        """The element the message is about (its text up to the first ': '), or ''."""
        head, separator, _ = self.message.partition(": ")
        return head if separator and " " not in head else ""

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}: [{self.layer}] {self.message}"


def identity(resource: dict) -> tuple[str, str]:
    """(resourceType, id) of a resource as reported, '?' for a missing id."""
    return str(resource.get("resourceType", "")), str(resource.get("id", "?"))
