"""`/api/v1/config/features` (runtime feature flags) and `/api/v1/config/live`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from extproc.admin.audit import audit
from extproc.admin.auth import Principal, require
from extproc.admin.context import AdminContext
from extproc.admin.errors import ERROR_RESPONSES, ApiError, ErrorResponse
from extproc.config import Config, ConfigError, load_config, masked_config
from extproc.features import FEATURES, OverlayError, feature_values, read_overlay, write_overlay


class FeaturesView(BaseModel):
    """The switches in force, and whether a change survives a restart."""

    features: dict[str, bool]
    persisted: bool = Field(description="Changes are written to the runtime overlay file.")


class FeaturesUpdate(BaseModel):
    """Several switches at once."""

    model_config = ConfigDict(extra="forbid")
    features: dict[str, bool] = Field(min_length=1)


class FeatureUpdate(BaseModel):
    """One switch."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool


def with_features(config: Config, flags: dict[str, bool]) -> Config:
    """`config` with the flags' settings changed, validated like any other config."""
    overrides = [(FEATURES[name], value) for name, value in flags.items()]
    tree = config.model_dump(mode="json")
    return load_config(environ={}, overrides=[*_flatten(tree), *overrides])


def _flatten(tree: dict[str, Any]) -> list[tuple[str, Any]]:
    # Whole top-level sections as overrides rebuild the same config exactly.
    return list(tree.items())


def build_router(ctx: AdminContext) -> APIRouter:
    """The feature-flag and live-config routes."""
    router = APIRouter(
        tags=["config"],
        responses={
            **ERROR_RESPONSES,
            409: {"model": ErrorResponse, "description": "Fixed by environment or flags"},
            500: {"model": ErrorResponse, "description": "Overlay file not writable"},
            503: {"model": ErrorResponse, "description": "No running server"},
        },
    )

    def view() -> FeaturesView:
        return FeaturesView(
            features=feature_values(ctx.config()), persisted=ctx.runtime_overlay is not None
        )

    def apply(principal: Principal, changes: dict[str, bool]) -> FeaturesView:
        unknown = sorted(set(changes) - set(FEATURES))
        if unknown:
            known = ", ".join(FEATURES)
            raise ApiError(
                404, "unknown_feature", f"Unknown feature {unknown[0]!r}; known: {known}."
            )
        if ctx.apply_config is None:
            raise ApiError(503, "not_running", "No running server to apply the change to.")
        before = feature_values(ctx.config())
        try:
            if ctx.runtime_overlay is not None and ctx.resolve is not None:
                flags = {**read_overlay(ctx.runtime_overlay), **changes}
                previous = (
                    ctx.runtime_overlay.read_bytes() if ctx.runtime_overlay.exists() else None
                )
                write_overlay(ctx.runtime_overlay, flags)
                try:
                    config = ctx.resolve()
                except ConfigError:
                    _restore(ctx, previous)
                    raise
            else:
                config = with_features(ctx.config(), changes)
        except OverlayError as exc:
            raise ApiError(500, "overlay_unwritable", str(exc)) from None
        except ConfigError as exc:
            raise ApiError(400, "invalid_config", str(exc)) from None
        overridden = [n for n, v in changes.items() if feature_values(config)[n] != v]
        if overridden:
            raise ApiError(
                409,
                "overridden",
                f"{overridden[0]!r} is fixed by an EXTPROC_* environment variable or a command-"
                "line flag, which take precedence over runtime flags.",
            )
        ctx.apply_config(config)
        audit(
            ctx.metadata,
            principal,
            "feature_flags.update",
            "feature_flags",
            ",".join(sorted(changes)),
            details={"before": {n: before[n] for n in changes}, "after": changes},
        )
        return view()

    @router.get("/api/v1/config/features", response_model=FeaturesView)
    def get_features(principal: Principal = Depends(require(ctx, "viewer"))) -> FeaturesView:
        """Every runtime switch and its value."""
        return view()

    @router.put("/api/v1/config/features", response_model=FeaturesView)
    def put_features(
        body: FeaturesUpdate, principal: Principal = Depends(require(ctx, "operator"))
    ) -> FeaturesView:
        """Change several switches; applied to new requests at once, persisted if possible."""
        return apply(principal, body.features)

    @router.put("/api/v1/config/features/{feature}", response_model=FeaturesView)
    def put_feature(
        feature: str,
        body: FeatureUpdate,
        principal: Principal = Depends(require(ctx, "operator")),
    ) -> FeaturesView:
        """Change one switch."""
        return apply(principal, {feature: body.enabled})

    @router.get("/api/v1/config/live", response_model=dict[str, Any])
    def get_live(principal: Principal = Depends(require(ctx, "operator"))) -> dict[str, Any]:
        """The configuration in force, secrets masked."""
        return masked_config(ctx.config())

    return router


def _restore(ctx: AdminContext, previous: bytes | None) -> None:
    assert ctx.runtime_overlay is not None
    if previous is None:
        ctx.runtime_overlay.unlink(missing_ok=True)
    else:
        ctx.runtime_overlay.write_bytes(previous)
