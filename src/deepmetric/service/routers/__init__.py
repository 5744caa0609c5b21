"""One APIRouter per resource of the service; ``deepmetric.service.app.create_app`` includes them all."""
