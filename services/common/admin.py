"""Topic administration: create the platform's topics (and their dead-letter topics) if missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec, with_dead_letters


def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec] | None = None, replication_factor: int = 1
) -> list[str]:
    """Create each missing topic; returns the names created. Existing topics are left as they are."""
    wanted = list(specs) if specs is not None else with_dead_letters()
    admin = KafkaAdminClient(**settings.client_config())
    try:
        existing = set(admin.list_topics())
        missing = [s for s in wanted if s.name not in existing]
        if missing:
            new = [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=replication_factor,
                    topic_configs={"retention.ms": str(s.retention_ms)},
                )
                for s in missing
            ]
            # Another replica may create them between our list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, wait_for_metadata=True)
        return [s.name for s in missing]
    finally:
        admin.close()
