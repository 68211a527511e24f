"""Each store's wall clock: its own IANA time zone (Stores page, :class:`~dangol_cloud.models_ops.StoreSetting`)
or else the ``TIMEZONE`` setting.

A chain may span zones: a sale at 08:00 in Taipei and one at 08:00 in Berlin are both breakfast. Three places
read a store's clock: the import (naive sale times of a store's rows are its local time,
:func:`dangol_cloud.ingest.import_rows`), training (the hour of each purchase for the day-part menus and the
cold-start popularity, :func:`dangol_cloud.training.load_frames`) and ``catalogue/1`` (the doors' day-part
clock, :func:`dangol_cloud.publishing.catalogue_messages`). When the zone a store's naive times are read in changes
(its own, or ``TIMEZONE`` for a store without one), its imported sales read in the old zone are moved to the same
wall-clock hours in the new one (:mod:`dangol_cloud.sale_zones`).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from dangol_protocol import check_zone

__all__ = ["local_times", "store_zones"]


#: The UTC times whose local time exists in every zone as pandas ``datetime64[ns]`` (a day inside its range).
_PANDAS_MIN = pd.Timestamp.min.tz_localize("UTC") + pd.Timedelta(days=1)
_PANDAS_MAX = pd.Timestamp.max.tz_localize("UTC") - pd.Timedelta(days=1)


def store_zones(session: Session) -> dict[str, str]:
    """``{store id: IANA zone}`` of the stores that have their own zone.

    Raises:
        ValueError: a stored zone is not (or no longer) a known IANA zone; the message names the store.
    """
    from dangol_cloud.models_ops import StoreSetting

    zones = {}
    for store_id, zone in session.execute(select(StoreSetting.store_id, StoreSetting.timezone)
                                          .where(StoreSetting.timezone.is_not(None))):
        try:
            zones[store_id] = check_zone(zone)
        except ValueError as exc:
            raise ValueError(f"store {store_id}: {exc} (Stores page → time zone)") from None
    return zones


def local_times(ts: pd.Series, stores: pd.Series, zones: dict[str, str], default: str) -> pd.Series:
    """Each sale's naive local time in its store's zone.

    Args:
        ts: ``(n,)`` times, aware or naive UTC.
        stores: ``(n,)`` store id of each time (None or "" = no store).
        zones: :func:`store_zones`.
        default: the zone of every store not in ``zones`` (the ``TIMEZONE`` setting).

    Returns:
        ``(n,)`` naive ``datetime64[ns]`` on the same index; NaT for a time pandas cannot hold in every zone (before
        1677-09-22 or after 2262-04-10 UTC: only a purchase stored before imports bounded sale times,
        :mod:`dangol_cloud.sale_rules`, can be one) instead of an OutOfBoundsDatetime for the whole series.
    """
    utc = pd.to_datetime(ts, utc=True, errors="coerce")  # NaT for what datetime64[ns] cannot hold at all
    # ... and for the day at either end, which a zone's offset would wrap around silently
    utc = utc.where((utc > _PANDAS_MIN) & (utc < _PANDAS_MAX))
    zone_of = stores.map(zones).fillna(default) if zones else pd.Series(default, index=ts.index)
    out = pd.Series(pd.NaT, index=ts.index, dtype="datetime64[ns]")
    for zone in pd.unique(zone_of):
        sel = (zone_of == zone).to_numpy()
        out[sel] = utc[sel].dt.tz_convert(ZoneInfo(zone)).dt.tz_localize(None).astype("datetime64[ns]")
    return out
