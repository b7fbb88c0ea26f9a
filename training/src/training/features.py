"""The model's input and target: defined once, used by training, the reference set and the ISVC."""

FEATURES = ["PULocationID", "DOLocationID", "trip_distance"]
ZONE_COLUMNS = ["PULocationID", "DOLocationID"]
TARGET = "duration"
PREDICTION = "prediction"

ZONE_MIN, ZONE_MAX = 1, 265
MAX_TRIP_DISTANCE = 500.0  # miles; TLC files hold odometer glitches of 10^5 miles
MIN_DURATION, MAX_DURATION = 1.0, 60.0  # minutes, the workshop's filter
