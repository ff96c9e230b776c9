"""Enrolment of pod attachments: CNI requests, the attachment state machine, the records
kept on the node, uninstall."""
