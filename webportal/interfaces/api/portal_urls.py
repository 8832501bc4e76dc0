from django.urls import path

from webportal.interfaces.api import portal

app_name = "integrations"

urlpatterns = [
    path("", portal.integrations, name="index"),
    path("tokens/<int:token_id>/revoke/", portal.revoke, name="revoke_token"),
    path("webhooks/", portal.register_webhook, name="register_webhook"),
    path("webhooks/<int:webhook_id>/remove/", portal.remove_webhook, name="remove_webhook"),
    path("deliveries/<int:delivery_id>/redeliver/", portal.redeliver, name="redeliver"),
    path("lis/", portal.register_lis, name="register_lis"),
    path("lis/<int:lis_endpoint_id>/remove/", portal.remove_lis, name="remove_lis"),
    path("lis-deliveries/<int:lis_delivery_id>/resend/", portal.resend_lis, name="resend_lis"),
]
