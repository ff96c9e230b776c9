"""The life of one pod attachment in the agent, as a transition table (anything else is a bug).

absent --add(meshed)--> enrolling --installed--> enrolled
absent --add(not meshed)--> passive              enrolling --failed--> absent
passive --mesh--> enrolling --abandoned--> passive (meshing a running pod failed)
enrolled --unmesh--> removing --removed--> passive (the pod runs on, outside the mesh)
enrolled/passive --delete--> removing --gone--> absent
passive --mesh--> enrolling                      enrolled --repair--> enrolled
"""

from __future__ import annotations

from enum import Enum


class Phase(Enum):
    ABSENT = "absent"
    ENROLLING = "enrolling"
    ENROLLED = "enrolled"
    PASSIVE = "passive"
    REMOVING = "removing"


class Event(Enum):
    ADD_MESHED = "add-meshed"
    ADD_PASSIVE = "add-passive"
    INSTALLED = "installed"
    FAILED = "failed"
    ABANDONED = "abandoned"
    UNMESH = "unmesh"
    MESH = "mesh"
    DELETE = "delete"
    REMOVED = "removed"
    GONE = "gone"
    REPAIR = "repair"


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.ABSENT, Event.ADD_MESHED): Phase.ENROLLING,
    (Phase.ABSENT, Event.ADD_PASSIVE): Phase.PASSIVE,
    (Phase.ENROLLING, Event.INSTALLED): Phase.ENROLLED,
    (Phase.ENROLLING, Event.FAILED): Phase.ABSENT,
    (Phase.ENROLLING, Event.ABANDONED): Phase.PASSIVE,
    (Phase.ENROLLED, Event.REPAIR): Phase.ENROLLED,
    (Phase.ENROLLED, Event.UNMESH): Phase.REMOVING,
    (Phase.ENROLLED, Event.DELETE): Phase.REMOVING,
    (Phase.PASSIVE, Event.DELETE): Phase.REMOVING,
    (Phase.PASSIVE, Event.MESH): Phase.ENROLLING,
    (Phase.PASSIVE, Event.ADD_PASSIVE): Phase.PASSIVE,
    (Phase.REMOVING, Event.REMOVED): Phase.PASSIVE,
    (Phase.REMOVING, Event.GONE): Phase.ABSENT,
}


class InvalidTransition(RuntimeError):
    pass


def next_phase(phase: Phase, event: Event) -> Phase:
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} is not allowed while {phase.value}") from None
