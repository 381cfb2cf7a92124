"""Great-circle distance between two points on the Earth (the haversine formula)."""

from __future__ import annotations

import math

__all__ = ["EARTH_RADIUS_KM", "great_circle_km"]

# The mean radius (IUGG): the sphere that best fits the ellipsoid. Steering ranks POPs, so the
# < 0.5 % error of a sphere against the ellipsoid never changes which is nearer in practice.
EARTH_RADIUS_KM = 6371.0088


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Kilometres along the surface between (lat1, lon1) and (lat2, lon2), in degrees.

    The haversine form stays accurate for short distances (where the law of cosines loses
    digits); ``min(1, ...)`` guards against rounding just past 1 for antipodal points.
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
