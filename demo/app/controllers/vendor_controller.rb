# frozen_string_literal: true

# Serves the page's JavaScript modules from node_modules (an import map names them):
# only .js files of the packages listed, nothing above them.
class VendorController < ActionController::Base
  PACKAGES = %w[@anycable/web @anycable/core nanoevents @hotwired/turbo].freeze

  # Script files, not JSONP endpoints: nothing secret is in them (Rails refuses a GET
  # answered with JavaScript as a cross-origin request otherwise).
  skip_forgery_protection

  def show
    root = Rails.root.join("node_modules").realpath
    path = Rails.root.join("node_modules", params[:path].to_s)
    file = path.exist? ? path.realpath : nil
    allowed = file && file.extname == ".js" && file.file? &&
      PACKAGES.any? { |pkg| file.to_s.start_with?("#{root}/#{pkg}/") }
    return head(:not_found) unless allowed

    expires_in 1.hour, public: true
    send_file file, type: "text/javascript", disposition: "inline"
  end
end
