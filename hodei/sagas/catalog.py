"""The three saga definitions, built against one set of dependencies."""

from __future__ import annotations

from hodei.domain.saga import SagaType
from hodei.sagas import execution, provisioning, recovery
from hodei.sagas.deps import SagaDeps
from hodei.sagas.engine import SagaDefinition


def definitions(deps: SagaDeps) -> dict[SagaType, SagaDefinition]:
    return {
        SagaType.PROVISIONING: provisioning.build(deps),
        SagaType.EXECUTION: execution.build(deps),
        SagaType.RECOVERY: recovery.build(deps),
    }
