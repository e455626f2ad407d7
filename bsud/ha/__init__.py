"""Highly available gateways: a drive's exports served by drbd-reactor's promoter on the DRBD Primary.

``agent`` is the vocabulary (an OCF agent entry, the gateway's values) the export kinds build their agents with;
``gateway`` builds a drive's start list from the kinds' declarations (``bsud.exports.KINDS``); ``ocf`` checks it
against the agents' own meta-data and tries the portblock agent; ``promoter`` writes drbd-reactor's file.
Nothing is imported here, so that an export kind can import ``bsud.ha.agent`` without the rest.
"""
