from django.contrib import admin

from webportal.accounts.models import Lab, Membership


class MembershipInline(admin.TabularInline[Membership, Lab]):
    model = Membership
    extra = 1


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin[Lab]):
    list_display = ["name", "slug", "active_model", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
